//! `.dockerignore`: which paths of the build context are left out, with Docker's semantics
//! (moby/patternmatcher).
//!
//! - One pattern per line; lines starting with `#` are comments; blank lines are skipped;
//!   patterns are trimmed and cleaned like Go's `filepath.Clean` (so `./a/`, `/a` and `a`
//!   are the same pattern).
//! - `*` matches within one path component, `?` one character, `[...]` a class, `\` escapes,
//!   `**` any number of components (`**/x` matches `x` at any depth).
//! - A pattern also matches everything under a matched directory.
//! - `!pattern` re-includes; the last matching pattern wins.
//!
//! API: [`Matcher::parse`], [`Matcher::load`] (reads `<context>/.dockerignore`),
//! [`Matcher::matches`] (is this relative path excluded?), and
//! [`Matcher::may_reinclude_under`] for walkers: whether an excluded directory must still be
//! descended into because an exception could re-include something below it.

use std::path::Path;

use regex::Regex;

/// A `.dockerignore` error: the line and what is wrong with its pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(".dockerignore:{line}: {message}")]
pub struct IgnoreError {
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// The cleaned pattern, without `!`.
    text: String,
    exclusion: bool,
    regex: Regex,
}

/// A parsed `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    patterns: Vec<Pattern>,
}

impl Matcher {
    /// Parses `.dockerignore` text.
    pub fn parse(text: &str) -> Result<Matcher, IgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let err = |message: String| IgnoreError {
                line: i + 1,
                message,
            };
            if line.starts_with('#') {
                continue;
            }
            let mut p = line.trim();
            if p.is_empty() {
                continue;
            }
            let exclusion = p.starts_with('!');
            if exclusion {
                p = p[1..].trim();
                if p.is_empty() {
                    return Err(err("illegal exclusion pattern: \"!\"".into()));
                }
            }
            let mut cleaned = clean(p);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let regex =
                compile(&cleaned).map_err(|e| err(format!("invalid pattern {p:?}: {e}")))?;
            patterns.push(Pattern {
                text: cleaned,
                exclusion,
                regex,
            });
        }
        Ok(Matcher { patterns })
    }

    /// Reads `<context_dir>/.dockerignore`; no file means nothing is excluded.
    pub fn load(context_dir: &Path) -> Result<Matcher, IgnoreError> {
        let path = context_dir.join(".dockerignore");
        match std::fs::read(&path) {
            Ok(bytes) => Matcher::parse(&String::from_utf8_lossy(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Matcher::default()),
            Err(e) => Err(IgnoreError {
                line: 0,
                message: format!("cannot read {}: {e}", path.display()),
            }),
        }
    }

    /// True when there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any `!` exception exists.
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }

    /// Whether `rel_path` (relative to the context, `/`-separated) is excluded: the last
    /// pattern matching it or one of its parent directories decides.
    pub fn matches(&self, rel_path: &Path) -> bool {
        let file = normalize(rel_path);
        if file.is_empty() {
            return false;
        }
        let parents: Vec<&str> = file.match_indices('/').map(|(i, _)| &file[..i]).collect();
        let mut matched = false;
        for p in &self.patterns {
            // An exception only matters once excluded, an exclusion only while included.
            if p.exclusion != matched {
                continue;
            }
            let hit = p.regex.is_match(&file) || parents.iter().any(|d| p.regex.is_match(d));
            if hit {
                matched = !p.exclusion;
            }
        }
        matched
    }

    /// For a walker at an excluded directory `rel_dir`: whether an exception pattern could
    /// match the directory itself or something below it, so the walker must descend.
    pub fn may_reinclude_under(&self, rel_dir: &Path) -> bool {
        let dir = normalize(rel_dir);
        let dir_parts: Vec<&str> = if dir.is_empty() {
            Vec::new()
        } else {
            dir.split('/').collect()
        };
        self.patterns.iter().filter(|p| p.exclusion).any(|p| {
            let pat_parts: Vec<&str> = p.text.split('/').collect();
            for (i, d) in dir_parts.iter().enumerate() {
                let Some(pp) = pat_parts.get(i) else {
                    // The pattern names a parent of this directory: all of it is re-included.
                    return true;
                };
                if pp.contains("**") {
                    return true;
                }
                match compile(pp) {
                    Ok(re) if re.is_match(d) => {}
                    _ => return false,
                }
            }
            true
        })
    }
}

fn normalize(path: &Path) -> String {
    let s = path.to_string_lossy();
    let cleaned = clean(&s);
    match cleaned.as_str() {
        "." | "/" => String::new(),
        c => c.trim_start_matches('/').to_string(),
    }
}

/// Go's `filepath.Clean` for `/`-separated paths.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// Compiles a cleaned pattern into an anchored regular expression.
fn compile(pattern: &str) -> Result<Regex, String> {
    let mut re = String::from("^");
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    let mut in_class = false;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        if in_class {
            match ch {
                ']' => {
                    in_class = false;
                    re.push(']');
                }
                '\\' if i < chars.len() => {
                    re.push_str(&regex::escape(&chars[i].to_string()));
                    i += 1;
                }
                '[' | '&' | '~' | '-' if ch != '-' || chars.get(i) == Some(&'-') => {
                    re.push('\\');
                    re.push(ch);
                }
                '^' | '!' if chars.get(i - 2) == Some(&'[') => re.push('^'),
                c => re.push(c),
            }
            continue;
        }
        match ch {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                re.push_str(if i >= chars.len() { ".*" } else { "(.*/)?" });
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '\\' => match chars.get(i) {
                Some(c) => {
                    re.push_str(&regex::escape(&c.to_string()));
                    i += 1;
                }
                None => re.push_str("\\\\"),
            },
            '[' => {
                in_class = true;
                re.push('[');
            }
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    if in_class {
        // Go's filepath.Match reports an unclosed class as a bad pattern.
        return Err("unclosed character class `[`".into());
    }
    re.push('$');
    Regex::new(&re).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_like_go() {
        assert_eq!(clean("./a//b/"), "a/b");
        assert_eq!(clean("/a/../b"), "/b");
        assert_eq!(clean("a/../.."), "..");
        assert_eq!(clean("./"), ".");
    }

    #[test]
    fn exceptions_aimed_outside_the_context_stay_inside_it() {
        let m = Matcher::parse("*\n!../secret\n!../../etc/passwd\n!/../../etc/group\n").unwrap();
        // `..` above a relative pattern matches no context path; a rooted one is clamped at the root.
        assert!(m.matches(Path::new("secret")));
        assert!(m.matches(Path::new("etc/passwd")));
        assert!(!m.matches(Path::new("etc/group")));
        assert!(m.matches(Path::new("x")));
    }

    #[test]
    fn classes() {
        let m = Matcher::parse("[a-c].txt\n[!x]y\n").unwrap();
        assert!(m.matches(Path::new("b.txt")));
        assert!(!m.matches(Path::new("d.txt")));
        assert!(m.matches(Path::new("zy")));
        assert!(!m.matches(Path::new("xy")));
        assert!(Matcher::parse("[abc").is_err());
    }
}
