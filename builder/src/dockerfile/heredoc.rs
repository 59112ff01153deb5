//! Heredocs (`<<EOF`, `<<-EOF`, `<<'EOF'`, `3<<EOF`): which words start one, and chomping.
//!
//! A heredoc word names the terminator line; quoting any part of the name disables expansion
//! of the body; `<<-` strips leading tabs (from the terminator when reading, and from the
//! body when the content is used as a file).

use std::sync::LazyLock;

use regex::Regex;

use super::shell::Lexer;

/// One heredoc attached to an instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The terminator, quotes removed.
    pub name: String,
    /// The body lines, each followed by `\n`, exactly as written (tabs kept even for `<<-`).
    pub content: String,
    /// False when any part of the name was quoted: the body is used literally.
    pub expand: bool,
    /// True for `<<-`.
    pub chomp: bool,
    /// The file descriptor number written before `<<` (0 when none).
    pub fd: u32,
}

impl Heredoc {
    /// The content as a file: leading tabs removed from every line when chomping.
    pub fn file_content(&self) -> String {
        if self.chomp {
            chomp(&self.content)
        } else {
            self.content.clone()
        }
    }
}

static RE_HEREDOC: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(\d*)<<(-?)\s*([^<]*)$").expect("valid regex"));
static RE_OPERATOR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\d*<<-?$").expect("valid regex"));
static RE_LEADING_TABS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?m)^\t+").expect("valid regex"));

fn no_vars(_: &str) -> Option<String> {
    None
}

/// Parses one word; `Ok(None)` when it is not a heredoc, an error for a malformed one
/// (an unterminated quote in the name).
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, String> {
    let Some(caps) = RE_HEREDOC.captures(word) else {
        return Ok(None);
    };
    let raw_name = &caps[3];
    if raw_name.is_empty() {
        return Ok(None);
    }
    let Ok(fd) = caps[1]
        .parse::<u32>()
        .or_else(|e| if caps[1].is_empty() { Ok(0) } else { Err(e) })
    else {
        return Ok(None);
    };
    let mut lex = Lexer::new('\\');
    lex.skip_unset = true;
    let words = lex
        .split_words(raw_name, &no_vars)
        .map_err(|e| format!("invalid heredoc {word:?}: {e}"))?;
    lex.raw_quotes = true;
    let raw_words = lex
        .split_words(raw_name, &no_vars)
        .map_err(|e| format!("invalid heredoc {word:?}: {e}"))?;
    if words.len() != 1 || raw_words.len() != 1 {
        return Ok(None);
    }
    Ok(Some(Heredoc {
        expand: words[0] == raw_words[0],
        name: words[0].clone(),
        content: String::new(),
        chomp: &caps[2] == "-",
        fd,
    }))
}

/// The heredocs a whole instruction line declares, in order.
pub fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, String> {
    let mut lex = Lexer::new('\\');
    lex.raw_quotes = true;
    lex.raw_escapes = true;
    lex.skip_unset = true;
    let words = lex.split_words(line, &no_vars).unwrap_or_default();
    let mut docs = Vec::new();
    let mut k = 0;
    while k < words.len() {
        let mut word = words[k].clone();
        // `<< EOF` and `<<- EOF`: the operator and the name are separate words here.
        if RE_OPERATOR.is_match(&word) && k + 1 < words.len() {
            word = format!("{word} {}", words[k + 1]);
            k += 1;
        }
        if let Some(doc) = parse_heredoc(&word)? {
            docs.push(doc);
        }
        k += 1;
    }
    Ok(docs)
}

/// Removes leading tabs from every line.
pub fn chomp(content: &str) -> String {
    RE_LEADING_TABS.replace_all(content, "").into_owned()
}
