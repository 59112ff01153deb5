//! Errors about a Dockerfile: file, line, column, the quoted line with a caret under the
//! fault, and what was expected.
//!
//! Displayed as:
//! ```text
//! Dockerfile:3:6: unknown flag: --form
//!     3 | COPY --form=build /out /out
//!       |      ^
//!   expected: one of --from=<value>, --chown=<value>, ...
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

/// How many characters of the faulty line are quoted.
const QUOTE_WIDTH: usize = 160;

/// An error located in a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line; 0 when the error concerns the whole file.
    pub line: usize,
    /// 1-based column in characters; 0 when no column applies.
    pub column: usize,
    pub message: String,
    /// The physical line quoted under the message.
    pub line_text: Option<String>,
    /// What would have been accepted.
    pub expected: Option<String>,
}

impl std::error::Error for Diagnostic {}

impl Diagnostic {
    /// A diagnostic at `line` (1-based), quoting it from `text` (the whole file).
    pub fn at_line(file: &Path, text: &str, line: usize, message: impl Into<String>) -> Self {
        let line_text = (line > 0)
            .then(|| {
                super::raw::physical_lines(text)
                    .get(line - 1)
                    .map(|l| l.to_string())
            })
            .flatten();
        Diagnostic {
            file: file.to_path_buf(),
            line,
            column: 0,
            message: message.into(),
            line_text,
            expected: None,
        }
    }

    /// A diagnostic inside an instruction: finds `needle` in the instruction's physical lines
    /// (`text`, starting at `start_line`) for the line and column, else points at the keyword.
    pub fn in_instruction(
        file: &Path,
        text: &str,
        start_line: usize,
        needle: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        let lines: Vec<&str> = super::raw::physical_lines(text);
        let mut found = None;
        if let Some(needle) = needle.filter(|n| !n.is_empty()) {
            for (i, l) in lines.iter().enumerate() {
                // On the first line, look after the keyword (`FROM R` must not point into FROM),
                // unless the needle is the keyword itself.
                let skip = if i == 0 && !l.trim_start().starts_with(needle) {
                    let lead = l.len() - l.trim_start().len();
                    l[lead..]
                        .find(char::is_whitespace)
                        .map_or(l.len(), |k| lead + k)
                } else {
                    0
                };
                if let Some(byte) = l[skip..].find(needle) {
                    found = Some((i, l[..skip + byte].chars().count() + 1));
                    break;
                }
            }
        }
        let (idx, column) = found.unwrap_or_else(|| {
            let first = lines.first().copied().unwrap_or("");
            (
                0,
                first.chars().take_while(|c| c.is_whitespace()).count() + 1,
            )
        });
        Diagnostic {
            file: file.to_path_buf(),
            line: start_line + idx,
            column,
            message: message.into(),
            line_text: lines.get(idx).map(|l| l.to_string()),
            expected: None,
        }
    }

    pub fn with_expected(mut self, expected: impl Into<String>) -> Self {
        self.expected = Some(expected.into());
        self
    }

    pub fn with_column(mut self, column: usize) -> Self {
        self.column = column;
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if self.column > 0 {
                write!(f, ":{}", self.column)?;
            }
        }
        write!(f, ": {}", self.message)?;
        if let Some(text) = &self.line_text {
            let num = self.line.to_string();
            let pad = " ".repeat(num.len());
            // Tabs would shift the caret: show them as single spaces. Long lines are shown
            // as a window around the column.
            let chars: Vec<char> = text
                .chars()
                .map(|c| if c == '\t' { ' ' } else { c })
                .collect();
            let start = self.column.saturating_sub(60).min(chars.len());
            let end = (start + QUOTE_WIDTH).min(chars.len());
            let prefix = if start > 0 { "…" } else { "" };
            let suffix = if end < chars.len() { "…" } else { "" };
            let shown: String = chars[start..end].iter().collect();
            write!(f, "\n  {num} | {prefix}{shown}{suffix}")?;
            if self.column > start && self.column <= end + 1 {
                let offset = self.column - 1 - start + prefix.chars().count();
                write!(f, "\n  {pad} | {}^", " ".repeat(offset))?;
            }
        }
        if let Some(expected) = &self.expected {
            write!(f, "\n  expected: {expected}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display() {
        let d = Diagnostic::in_instruction(
            Path::new("Dockerfile"),
            "COPY --form=a b c",
            3,
            Some("--form"),
            "unknown flag: --form",
        )
        .with_expected("one of --from=<value>");
        assert_eq!(
            d.to_string(),
            "Dockerfile:3:6: unknown flag: --form\n  3 | COPY --form=a b c\n    |      ^\n  expected: one of --from=<value>"
        );
    }

    #[test]
    fn needle_is_searched_after_the_keyword() {
        let d = Diagnostic::in_instruction(Path::new("D"), "FROM R AS x", 1, Some("R"), "m");
        assert_eq!(d.column, 6);
        let d = Diagnostic::in_instruction(Path::new("D"), "  COPPY a b", 1, Some("COPPY"), "m");
        assert_eq!(d.column, 3);
    }

    #[test]
    fn long_lines_are_windowed() {
        let line = format!("RUN {}BAD{}", "a".repeat(500), "b".repeat(500));
        let d = Diagnostic::in_instruction(Path::new("D"), &line, 1, Some("BAD"), "bad");
        let shown = d.to_string();
        let quoted = shown.lines().nth(1).unwrap();
        let caret = shown.lines().nth(2).unwrap();
        assert!(quoted.chars().count() < 200, "{quoted}");
        let col = caret.chars().position(|c| c == '^').unwrap();
        assert_eq!(quoted.chars().nth(col), Some('B'), "{shown}");
    }
}
