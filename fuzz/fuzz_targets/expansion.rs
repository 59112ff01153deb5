//! Fuzzes the shell lexer in every mode. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_fuzz::dockerfile::{heredoc, shell::Lexer};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let vars = |name: &str| match name.len() % 3 {
        0 => None,
        1 => Some(String::new()),
        _ => Some(format!("a *b? {name}")),
    };
    for escape in ['\\', '`'] {
        for mode in 0..16u8 {
            let mut lex = Lexer::new(escape);
            lex.raw_quotes = mode & 1 != 0;
            lex.raw_escapes = mode & 2 != 0;
            lex.skip_unset = mode & 4 != 0;
            lex.skip_process_quotes = mode & 8 != 0;
            let _ = lex.process(text, &vars);
        }
    }
    let _ = heredoc::heredocs_from_line(text);
    let _ = heredoc::parse_heredoc(text);
});
