//! The raw Dockerfile parser: text to a list of [`Node`]s (BuildKit's `parser` package).
//!
//! This layer handles parser directives, comments, line continuations with the escape
//! character, heredocs, the `--flag` words before an instruction's arguments, and splits the
//! arguments the way BuildKit's raw parser does for each keyword (JSON exec form, white-space
//! lists, key/value pairs, ...). It accepts any keyword and any flag: validation is the job of
//! [`super::instruction`]. [`Node::dump`] prints BuildKit's test format.

use std::fmt::Write as _;
use std::sync::LazyLock;

use regex::Regex;

use super::directives::{Directive, DirectiveParser};
use super::heredoc::{Heredoc, heredocs_from_line};

/// Lines longer than this are rejected (BuildKit's scanner limit).
pub const MAX_LINE: usize = 65535;

/// The arguments of one instruction, as the raw parser split them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    Words(Vec<String>),
    /// ONBUILD's trigger instruction.
    Nested(Box<Node>),
}

/// One instruction of the raw tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The keyword as written (`run`, `RUN`, ...).
    pub keyword: String,
    /// The `--flag[=value]` words before the arguments (a final bare `--` dropped).
    pub flags: Vec<String>,
    pub args: Args,
    /// True when the arguments were a JSON array (exec form).
    pub json: bool,
    /// The instruction's text with continuation lines joined.
    pub original: String,
    /// 1-based, inclusive; the end includes continuation and heredoc lines.
    pub start_line: usize,
    pub end_line: usize,
    pub heredocs: Vec<Heredoc>,
}

impl Node {
    /// The argument words (empty for ONBUILD).
    pub fn words(&self) -> &[String] {
        match &self.args {
            Args::Words(w) => w,
            Args::Nested(_) => &[],
        }
    }

    /// BuildKit's `Node.Dump()`: `run ["--flag"] "arg" ...`.
    pub fn dump(&self) -> String {
        let mut s = self.keyword.to_lowercase();
        if !self.flags.is_empty() {
            let quoted: Vec<String> = self.flags.iter().map(|f| go_quote(f)).collect();
            let _ = write!(s, " [{}]", quoted.join(" "));
        }
        match &self.args {
            Args::Words(words) => {
                for w in words {
                    s.push(' ');
                    s.push_str(&go_quote(w));
                }
            }
            Args::Nested(child) => {
                let _ = write!(s, " ({})", child.dump());
            }
        }
        s.trim().to_string()
    }

    /// Whether heredocs on this instruction's line are read (RUN, COPY, ADD in shell form,
    /// also behind ONBUILD).
    pub fn can_contain_heredoc(&self) -> bool {
        let node = match &self.args {
            Args::Nested(child) if self.keyword.eq_ignore_ascii_case("onbuild") => child,
            _ => self,
        };
        ["add", "copy", "run"]
            .iter()
            .any(|k| node.keyword.eq_ignore_ascii_case(k))
            && !node.json
    }
}

/// A warning that does not stop parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub line: usize,
    pub message: String,
}

/// The raw parse of one file.
#[derive(Debug, Clone)]
pub struct RawDockerfile {
    pub nodes: Vec<Node>,
    pub directives: Vec<Directive>,
    pub escape: char,
    pub warnings: Vec<Warning>,
}

impl RawDockerfile {
    /// BuildKit's dump of the whole tree (one `(...)` line per instruction, no final newline).
    pub fn dump(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("({})", n.dump()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A raw-parse error: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawError {
    /// 1-based line (0 when the error is about the whole file).
    pub line: usize,
    /// 1-based column in characters (0 when not known).
    pub column: usize,
    pub message: String,
    /// What would have been accepted, if it helps.
    pub expected: Option<String>,
}

impl RawError {
    fn new(line: usize, message: impl Into<String>) -> Self {
        RawError {
            line,
            column: 0,
            message: message.into(),
            expected: None,
        }
    }
    fn expected(mut self, expected: impl Into<String>) -> Self {
        self.expected = Some(expected.into());
        self
    }
}

static RE_WHITESPACE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[\t\x0B\x0C\r ]+").expect("valid regex"));

/// Splits the text into physical lines like Go's `bufio.ScanLines` (drops one `\r` before
/// each `\n`, and no empty line after a final newline).
pub fn physical_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    if text.is_empty() || text.ends_with('\n') {
        lines.pop();
    }
    lines
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Removes a trailing escape character (and white space after it); `true` when the line ends
/// the instruction.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    // BuildKit's `(^|[^\\])\\[ \t]*$`: an escaped escape character does not continue.
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(rest) if !rest.ends_with(escape) => (rest, false),
        _ => (line, true),
    }
}

/// Parses Dockerfile text into the raw tree.
pub fn parse(text: &str) -> Result<RawDockerfile, RawError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines = physical_lines(text);
    let mut directives = DirectiveParser::new();
    let mut found_directives = Vec::new();
    let mut escape = '\\';
    let mut nodes = Vec::new();
    let mut warnings = Vec::new();
    let mut i = 0;
    let check_len = |n: usize, l: &str| {
        if l.len() > MAX_LINE {
            Err(RawError::new(
                n,
                format!("dockerfile line greater than max allowed size of {MAX_LINE}"),
            ))
        } else {
            Ok(())
        }
    };

    while i < lines.len() {
        let raw = lines[i];
        i += 1;
        let start = i;
        check_len(start, raw)?;
        let token = raw.trim_start();
        if let Some(d) = directives
            .parse_line(token)
            .map_err(|m| RawError::new(start, m))?
        {
            if d.name == "escape" {
                escape = match d.value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    other => {
                        return Err(RawError::new(
                            start,
                            format!("invalid escape token '{other}'"),
                        )
                        .expected("`# escape=\\` or `# escape=``"));
                    }
                };
            }
            found_directives.push(d);
        }
        let token = if is_comment(token) { "" } else { token };
        let (first, mut end) = trim_continuation(token, escape);
        if end && first.is_empty() {
            continue;
        }
        let mut line = first.to_string();
        let mut empty_continuation = false;
        while !end && i < lines.len() {
            let raw = lines[i];
            i += 1;
            check_len(i, raw)?;
            if is_comment(raw) {
                continue;
            }
            if raw.trim_start().is_empty() {
                empty_continuation = true;
                continue;
            }
            let (part, e) = trim_continuation(raw, escape);
            line.push_str(part);
            end = e;
        }
        if empty_continuation {
            warnings.push(Warning {
                line: start,
                message: format!(
                    "Empty continuation line found in: {line}; empty continuation lines will become errors in a future release"
                ),
            });
        }
        let mut node = node_from_line(&line, escape).map_err(|m| {
            let mut e = RawError::new(start, m.message);
            e.expected = m.expected;
            if let Some(byte) = m.needle.as_deref().and_then(|n| raw.find(n)) {
                e.column = raw[..byte].chars().count() + 1;
            }
            e
        })?;
        node.start_line = start;
        if node.can_contain_heredoc() && line.contains("<<") {
            let docs = heredocs_from_line(&line).map_err(|m| RawError::new(start, m))?;
            for mut doc in docs {
                let mut terminated = false;
                while i < lines.len() {
                    let body = lines[i];
                    i += 1;
                    check_len(i, body)?;
                    let candidate = if doc.chomp {
                        body.trim_start_matches('\t')
                    } else {
                        body
                    };
                    if candidate == doc.name {
                        terminated = true;
                        break;
                    }
                    doc.content.push_str(body);
                    doc.content.push('\n');
                }
                if !terminated {
                    let mut e = RawError::new(
                        start,
                        format!("unterminated heredoc: no line `{}` ends it", doc.name),
                    )
                    .expected(format!(
                        "a line holding only `{}` after the heredoc body",
                        doc.name
                    ));
                    if let Some(byte) = raw.find("<<") {
                        e.column = raw[..byte].chars().count() + 1;
                    }
                    return Err(e);
                }
                node.heredocs.push(doc);
            }
        }
        node.end_line = i;
        nodes.push(node);
    }
    if nodes.is_empty() {
        return Err(RawError::new(lines.len(), "file with no instructions")
            .expected("at least one instruction, e.g. FROM"));
    }
    Ok(RawDockerfile {
        nodes,
        directives: found_directives,
        escape,
        warnings,
    })
}

/// An error from splitting one instruction.
#[derive(Debug)]
pub struct LineError {
    pub message: String,
    pub expected: Option<String>,
    /// Text at the fault, to place the caret.
    pub needle: Option<String>,
}

/// Parses one logical line (continuations joined) into a node (no heredocs, no lines).
pub fn node_from_line(line: &str, escape: char) -> Result<Node, LineError> {
    node_from_line_at(line, escape, 0)
}

/// ONBUILD nesting accepted by the raw layer (the typed layer allows only one level).
const MAX_ONBUILD_NESTING: usize = 8;

fn node_from_line_at(line: &str, escape: char, depth: usize) -> Result<Node, LineError> {
    let trimmed = line.trim();
    let mut parts = RE_WHITESPACE.splitn(trimmed, 2);
    let keyword = parts.next().unwrap_or("").to_string();
    let (rest, flags) = match parts.next() {
        Some(after) => extract_flags(after),
        None => (String::new(), Vec::new()),
    };
    let rest = rest.trim();
    let mut node = Node {
        keyword,
        flags,
        args: Args::Words(Vec::new()),
        json: false,
        original: line.to_string(),
        start_line: 0,
        end_line: 0,
        heredocs: Vec::new(),
    };
    let words = |v: Vec<String>| Args::Words(v);
    match node.keyword.to_ascii_lowercase().as_str() {
        "add" | "copy" | "volume" => match parse_json(rest)? {
            Some(list) => {
                node.args = words(list);
                node.json = true;
            }
            None => node.args = words(split_whitespace(rest)),
        },
        "run" | "cmd" | "entrypoint" | "shell" => {
            let (args, json) = parse_maybe_json(rest)?;
            node.args = words(args);
            node.json = json;
        }
        "from" | "expose" => node.args = words(split_whitespace(rest)),
        "arg" => node.args = words(parse_words(rest, escape)),
        "env" => node.args = words(parse_name_val(rest, "ENV", escape)?),
        "label" => node.args = words(parse_name_val(rest, "LABEL", escape)?),
        "user" | "workdir" | "maintainer" | "stopsignal" => {
            node.args = words(if rest.is_empty() {
                Vec::new()
            } else {
                vec![rest.to_string()]
            })
        }
        "healthcheck" => {
            let sep = rest.find(char::is_whitespace).unwrap_or(rest.len());
            if sep > 0 {
                let (typ, cmd) = rest.split_at(sep);
                let (mut args, json) = parse_maybe_json(cmd.trim_start())?;
                args.insert(0, typ.to_string());
                node.args = words(args);
                node.json = json;
            }
        }
        "onbuild" => {
            if depth >= MAX_ONBUILD_NESTING {
                return Err(LineError {
                    message: "ONBUILD nested too deeply".into(),
                    expected: Some("ONBUILD <instruction other than ONBUILD>".into()),
                    needle: None,
                });
            }
            if !rest.is_empty() {
                node.args = Args::Nested(Box::new(node_from_line_at(rest, escape, depth + 1)?));
            }
        }
        _ => node.args = words(vec![String::new()]),
    }
    Ok(node)
}

/// Where the word splitters below are in a line: between words, in a word,
/// or inside a quote opened by the char.
#[derive(PartialEq)]
enum Phase {
    Spaces,
    Word,
    Quote(char),
}

/// Splits off the leading `--flag` words (BuildKit's `extractBuilderFlags`).
fn extract_flags(line: &str) -> (String, Vec<String>) {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut blank_ok = false;
    let mut k = 0;
    while k <= chars.len() {
        let at_end = k == chars.len();
        let (pos, ch) = if at_end { (line.len(), '\0') } else { chars[k] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if ch.is_whitespace() {
                k += 1;
                continue;
            }
            if ch != '-' || chars.get(k + 1).map(|c| c.1) != Some('-') {
                return (line[pos..].to_string(), words);
            }
            phase = Phase::Word;
        }
        if at_end {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            break;
        }
        match phase {
            Phase::Word => {
                if ch.is_whitespace() {
                    phase = Phase::Spaces;
                    if word == "--" {
                        return (line[pos..].to_string(), words);
                    }
                    if blank_ok || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    word.clear();
                    blank_ok = false;
                } else if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                } else if ch == '\\' {
                    if let Some(&(_, next)) = chars.get(k + 1) {
                        word.push(next);
                        k += 1;
                    }
                } else {
                    word.push(ch);
                }
            }
            Phase::Quote(q) => {
                if ch == q {
                    phase = Phase::Word;
                } else if ch == '\\' {
                    match chars.get(k + 1) {
                        Some(&(_, next)) => {
                            word.push(next);
                            k += 1;
                        }
                        None => phase = Phase::Word,
                    }
                } else {
                    word.push(ch);
                }
            }
            Phase::Spaces => unreachable!("handled above"),
        }
        k += 1;
    }
    (String::new(), words)
}

/// Splits on runs of spaces and tabs (BuildKit's `parseStringsWhitespaceDelimited`).
fn split_whitespace(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        return Vec::new();
    }
    RE_WHITESPACE.split(rest).map(String::from).collect()
}

/// Parses an exec-form JSON array. `Ok(None)`: not a JSON array (use the shell form);
/// error: a JSON array holding something other than strings.
pub fn parse_json(rest: &str) -> Result<Option<Vec<String>>, LineError> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Ok(None);
    }
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(rest)
    else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            serde_json::Value::String(s) => out.push(s),
            other => {
                return Err(LineError {
                    message: format!("exec form holds {other}, which is not a string"),
                    expected: Some(
                        "a JSON array of strings, e.g. [\"/bin/sh\", \"-c\", \"echo hi\"]".into(),
                    ),
                    needle: Some(other.to_string()),
                });
            }
        }
    }
    Ok(Some(out))
}

fn parse_maybe_json(rest: &str) -> Result<(Vec<String>, bool), LineError> {
    if rest.is_empty() {
        return Ok((Vec::new(), false));
    }
    Ok(match parse_json(rest)? {
        Some(list) => (list, true),
        None => (vec![rest.to_string()], false),
    })
}

/// Splits on white space keeping quotes and escapes as written (BuildKit's `parseWords`).
pub fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut blank_ok = false;
    let mut k = 0;
    while k <= chars.len() {
        let at_end = k == chars.len();
        let ch = if at_end { '\0' } else { chars[k] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if ch.is_whitespace() {
                k += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if at_end {
            if blank_ok || !word.is_empty() {
                words.push(word);
            }
            break;
        }
        match phase {
            Phase::Word => {
                if ch.is_whitespace() {
                    phase = Phase::Spaces;
                    if blank_ok || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    blank_ok = false;
                    k += 1;
                    continue;
                }
                if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                }
                if ch == escape {
                    if k + 1 == chars.len() {
                        k += 1;
                        continue;
                    }
                    word.push(ch);
                    k += 1;
                }
                word.push(chars[k]);
            }
            Phase::Quote(q) => {
                if ch == q {
                    phase = Phase::Word;
                }
                if ch == escape && q != '\'' {
                    if k + 1 == chars.len() {
                        phase = Phase::Word;
                        k += 1;
                        continue;
                    }
                    word.push(ch);
                    k += 1;
                }
                word.push(chars[k]);
            }
            Phase::Spaces => unreachable!("handled above"),
        }
        k += 1;
    }
    words
}

/// ENV/LABEL pairs as `key, value, separator` triples (separator `""` for `KEY value`).
pub fn parse_name_val(rest: &str, key: &str, escape: char) -> Result<Vec<String>, LineError> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return Ok(Vec::new());
    }
    if !words[0].contains('=') {
        let mut parts = RE_WHITESPACE.splitn(rest, 2);
        let name = parts.next().unwrap_or("").to_string();
        return match parts.next() {
            Some(value) => Ok(vec![name, value.to_string(), String::new()]),
            None => Err(LineError {
                message: format!("{key} must have two arguments"),
                expected: Some(format!("{key} {name}=value (or {key} {name} value)")),
                needle: Some(name.clone()),
            }),
        };
    }
    let mut out = Vec::with_capacity(words.len() * 3);
    for word in words {
        let Some((k, v)) = word.split_once('=') else {
            return Err(LineError {
                message: format!(
                    "Syntax error - can't find = in \"{word}\". Must be of the form: name=value"
                ),
                expected: Some(format!(
                    "{key} name=value ... (all pairs with =, or one `{key} name value`)"
                )),
                needle: Some(word),
            });
        };
        out.extend([k.to_string(), v.to_string(), "=".to_string()]);
    }
    Ok(out)
}

/// Go's `strconv.Quote`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0C' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0B' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// An approximation of Go's `strconv.IsPrint` for non-ASCII characters: not a control,
/// format, separator (other than U+0020), surrogate or private-use character.
fn is_go_printable(c: char) -> bool {
    let u = c as u32;
    if u < 0x80 {
        return (0x20..0x7f).contains(&u);
    }
    !(c.is_control()
        || (0x80..=0xa0).contains(&u)
        || u == 0xad
        || (0x2000..=0x200f).contains(&u)
        || (0x2028..=0x202f).contains(&u)
        || (0x205f..=0x206f).contains(&u)
        || u == 0x3000
        || u == 0xfeff
        || (0xe000..=0xf8ff).contains(&u)
        || (0xfff9..=0xfffb).contains(&u)
        || u >= 0xf0000
        || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_and_flags() {
        let df = parse("FROM a\nCOPY --from=x -- a b\nONBUILD RUN [\"x\"]\n").unwrap();
        assert_eq!(
            df.dump(),
            "(from \"a\")\n(copy [\"--from=x\"] \"a\" \"b\")\n(onbuild (run \"x\"))"
        );
    }

    #[test]
    fn errors() {
        assert!(parse("").is_err());
        assert!(parse("# c\n").is_err());
        assert_eq!(parse("FROM a\nENV X\n").unwrap_err().line, 2);
        assert!(parse("RUN [\"a\", [1]]").is_err());
        assert!(parse("RUN <<EOF\nx\n").is_err());
        let deep = format!("{}RUN x", "ONBUILD ".repeat(5_000));
        assert!(
            parse(&deep)
                .unwrap_err()
                .message
                .contains("nested too deeply")
        );
        assert!(
            parse("ONBUILD ONBUILD RUN x").is_ok(),
            "the raw layer accepts it; the typed layer rejects it"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(go_quote("a\"b\\c\td\u{1}é"), "\"a\\\"b\\\\c\\td\\x01é\"");
    }
}
