//! Parser directives: `# escape=`, `# syntax=`, `# check=` at the top of a Dockerfile.
//!
//! Directives are recognised only before the first instruction, blank line or ordinary
//! comment; names are case-insensitive; unknown names end the directive block like comments.
//! [`detect_syntax`] and [`detect_check`] also accept a `#!` line before the directive, and
//! (for `syntax` only) the `//key=value` comment style and a leading JSON object.

use std::sync::LazyLock;

use regex::Regex;

/// One recognised directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Lower-cased name: `escape`, `syntax` or `check`.
    pub name: String,
    pub value: String,
    /// 1-based line of the directive.
    pub line: usize,
}

const KNOWN: [&str; 3] = ["escape", "syntax", "check"];

static HASH_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$").expect("valid regex")
});
static SLASH_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^//\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$").expect("valid regex")
});

/// Reads directives line by line until the first line that is not one.
#[derive(Debug)]
pub struct DirectiveParser {
    re: &'static Regex,
    line: usize,
    done: bool,
    seen: Vec<String>,
}

impl Default for DirectiveParser {
    fn default() -> Self {
        Self::new()
    }
}

impl DirectiveParser {
    /// A parser for `# key=value` directives.
    pub fn new() -> Self {
        DirectiveParser {
            re: &HASH_RE,
            line: 0,
            done: false,
            seen: Vec::new(),
        }
    }

    fn slash_style() -> Self {
        DirectiveParser {
            re: &SLASH_RE,
            ..Self::new()
        }
    }

    /// Feeds the next physical line; returns a directive if the line is one. Errors on a
    /// directive given twice.
    pub fn parse_line(&mut self, line: &str) -> Result<Option<Directive>, String> {
        self.line += 1;
        if self.done {
            return Ok(None);
        }
        if self.line == 1 && line.starts_with("#!") {
            return Ok(None);
        }
        let Some(caps) = self.re.captures(line) else {
            self.done = true;
            return Ok(None);
        };
        let name = caps[1].to_ascii_lowercase();
        if !KNOWN.contains(&name.as_str()) {
            self.done = true;
            return Ok(None);
        }
        if self.seen.contains(&name) {
            return Err(format!("only one {name} parser directive can be used"));
        }
        self.seen.push(name.clone());
        Ok(Some(Directive {
            name,
            value: caps[2].to_string(),
            line: self.line,
        }))
    }

    /// All directives at the top of `text`.
    pub fn parse_all(mut self, text: &str) -> Result<Vec<Directive>, String> {
        let mut out = Vec::new();
        for line in text.lines() {
            if let Some(d) = self.parse_line(line)? {
                out.push(d);
            }
            if self.done {
                break;
            }
        }
        Ok(out)
    }
}

/// A directive found by [`detect_syntax`] / [`detect_check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// The directive's first word (the frontend reference for `syntax`).
    pub value: String,
    /// The full value, including anything after the first word.
    pub cmdline: String,
    /// 1-based line (0 for a JSON object).
    pub line: usize,
}

/// Finds a `syntax` directive in any of the accepted styles.
pub fn detect_syntax(text: &str) -> Option<Detected> {
    detect(text, "syntax", true)
}

/// Finds a `check` directive (`#` comment style only).
pub fn detect_check(text: &str) -> Option<Detected> {
    detect(text, "check", false)
}

fn detect(text: &str, key: &str, any_format: bool) -> Option<Detected> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (body, line_offset) = match text.strip_prefix("#!") {
        Some(_) => (text.split_once('\n').map(|(_, rest)| rest).unwrap_or(""), 1),
        None => (text, 0),
    };
    if any_format
        && let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(body)
    {
        return match map.get(key) {
            Some(serde_json::Value::String(v)) => Some(Detected {
                value: first_word(v),
                cmdline: v.clone(),
                line: line_offset,
            }),
            _ => None,
        };
    }
    let mut parsers = vec![DirectiveParser::new()];
    if any_format {
        parsers.insert(0, DirectiveParser::slash_style());
    }
    for parser in parsers {
        let Ok(found) = parser.parse_all(body) else {
            continue;
        };
        if let Some(d) = found.into_iter().find(|d| d.name == key) {
            return Some(Detected {
                value: first_word(&d.value),
                cmdline: d.value,
                line: d.line + line_offset,
            });
        }
    }
    None
}

fn first_word(s: &str) -> String {
    s.split_whitespace().next().unwrap_or("").to_string()
}
