//! Fuzzes the .dockerignore matcher: the first line is a path, the rest the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use strata_fuzz::dockerignore::Matcher;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, patterns) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(m) = Matcher::parse(patterns) else {
        return;
    };
    let _ = m.matches(Path::new(path));
    let _ = m.may_reinclude_under(Path::new(path));
});
