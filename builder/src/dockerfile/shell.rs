//! BuildKit-compatible shell lexer: word splitting and variable expansion.
//!
//! This is the lexer Docker applies to the fields it expands (ENV, LABEL, WORKDIR, COPY paths,
//! ...): quotes are removed (`'…'` literal, `"…"` allows `$` and a few escapes), the escape
//! character escapes the next character outside quotes, and `$V`, `${V}`, `${V:-w}`, `${V-w}`,
//! `${V:+w}`, `${V+w}`, `${V:?m}`, `${V?m}`, `${V#p}`, `${V##p}`, `${V%p}`, `${V%%p}`,
//! `${V/p/r}` and `${V//p/r}` are substituted.
//!
//! Entry points: [`expand_word`] (one word, no splitting), [`split_words`] (split on unquoted
//! white space; an unquoted substitution is itself split), and [`Lexer`] for the options the
//! parser needs (raw quotes, raw escapes, keeping unset variables, a backtick escape).

use std::collections::BTreeSet;

/// How deeply `${...}` substitutions may nest (a bound on recursion, far above real use).
pub const MAX_NESTING: usize = 64;

/// Looks a variable up by name; `None` means unset, `Some("")` set and empty.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// An expansion error (unterminated quote, bad substitution, `${V:?msg}` on an unset
/// variable, ...). The message says what was wrong; the caller adds where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ShellError {
    pub message: String,
}

fn err<T>(message: impl Into<String>) -> Result<T, ShellError> {
    Err(ShellError {
        message: message.into(),
    })
}

/// Expands `word` as one word (no splitting) with the default escape `\`.
pub fn expand_word(word: &str, lookup: Lookup<'_>) -> Result<String, ShellError> {
    Lexer::new('\\').expand_word(word, lookup)
}

/// Splits `text` into words with the default escape `\`, expanding variables.
pub fn split_words(text: &str, lookup: Lookup<'_>) -> Result<Vec<String>, ShellError> {
    Lexer::new('\\').split_words(text, lookup)
}

/// The result of one expansion with the names it referenced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    pub word: String,
    pub words: Vec<String>,
    /// Referenced names that were set (possibly empty).
    pub matched: BTreeSet<String>,
    /// Referenced names that were unset.
    pub unmatched: BTreeSet<String>,
}

/// A configured lexer (BuildKit's `shell.Lex`).
#[derive(Debug, Clone, Copy)]
pub struct Lexer {
    pub escape: char,
    /// Keep quote characters in the output.
    pub raw_quotes: bool,
    /// Keep escape characters in the output.
    pub raw_escapes: bool,
    /// Leave references to unset variables as written.
    pub skip_unset: bool,
    /// Treat quotes as ordinary characters (COPY heredoc contents).
    pub skip_process_quotes: bool,
}

impl Lexer {
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset: false,
            skip_process_quotes: false,
        }
    }

    pub fn expand_word(&self, word: &str, lookup: Lookup<'_>) -> Result<String, ShellError> {
        Ok(self.process(word, lookup)?.word)
    }

    pub fn split_words(&self, text: &str, lookup: Lookup<'_>) -> Result<Vec<String>, ShellError> {
        Ok(self.process(text, lookup)?.words)
    }

    /// Processes `text` once, giving both the single-word and the split result.
    pub fn process(&self, text: &str, lookup: Lookup<'_>) -> Result<Expansion, ShellError> {
        let mut sw = ShellWord {
            chars: text.chars().collect(),
            pos: 0,
            lex: *self,
            lookup,
            raw_escapes: self.raw_escapes,
            depth: 0,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        };
        let (word, words) = sw
            .process_stop_on(None, self.raw_escapes)
            .map_err(|e| ShellError {
                message: format!("failed to process \"{text}\": {}", e.message),
            })?;
        Ok(Expansion {
            word,
            words,
            matched: sw.matched,
            unmatched: sw.unmatched,
        })
    }
}

#[derive(Default)]
struct Words {
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }
    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
        self.in_word = true;
    }
    fn add_string(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }
    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }
    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(std::mem::take(&mut self.word));
        }
        self.words
    }
}

struct ShellWord<'a> {
    chars: Vec<char>,
    pos: usize,
    lex: Lexer,
    lookup: Lookup<'a>,
    /// Whether escapes are kept; set for the duration of each nested `process_stop_on`.
    raw_escapes: bool,
    /// Nesting of `${...}` being processed, bounded by [`MAX_NESTING`].
    depth: usize,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

impl ShellWord<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        let v = (self.lookup)(name);
        if v.is_some() {
            self.matched.insert(name.to_string());
        } else {
            self.unmatched.insert(name.to_string());
        }
        v
    }

    /// Processes until `stop` (consumed) or the end; `raw_escapes` keeps escape characters.
    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), ShellError> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let r = self.process_stop_on_inner(stop);
        self.raw_escapes = saved;
        r
    }

    fn process_stop_on_inner(
        &mut self,
        stop: Option<char>,
    ) -> Result<(String, Vec<String>), ShellError> {
        let raw_escapes = self.raw_escapes;
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.pos += 1;
                return Ok((result, words.finish()));
            }
            match ch {
                '$' => {
                    let tmp = self.process_dollar()?;
                    result.push_str(&tmp);
                    words.add_string(&tmp);
                }
                '\'' if !self.lex.skip_process_quotes => {
                    let tmp = self.process_single_quote()?;
                    result.push_str(&tmp);
                    words.add_raw_string(&tmp);
                }
                '"' if !self.lex.skip_process_quotes => {
                    let tmp = self.process_double_quote()?;
                    result.push_str(&tmp);
                    words.add_raw_string(&tmp);
                }
                _ => {
                    self.pos += 1;
                    if ch == self.lex.escape {
                        if raw_escapes {
                            words.add_raw_char(ch);
                            result.push(ch);
                        }
                        match self.next() {
                            None => break,
                            Some(c) => {
                                words.add_raw_char(c);
                                result.push(c);
                            }
                        }
                    } else {
                        words.add_char(ch);
                        result.push(ch);
                    }
                }
            }
        }
        if let Some(stop) = stop {
            return err(format!(
                "unexpected end of statement while looking for matching {stop}"
            ));
        }
        Ok((result, words.finish()))
    }

    fn process_single_quote(&mut self) -> Result<String, ShellError> {
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.next() {
                None => {
                    return err(
                        "unexpected end of statement while looking for matching single-quote",
                    );
                }
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String, ShellError> {
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.peek() {
                None => {
                    return err(
                        "unexpected end of statement while looking for matching double-quote",
                    );
                }
                Some('"') => {
                    self.pos += 1;
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let v = self.process_dollar()?;
                    result.push_str(&v);
                }
                Some(mut ch) => {
                    self.pos += 1;
                    if ch == self.lex.escape {
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.lex.escape => {
                                if self.raw_escapes {
                                    result.push(ch);
                                }
                                ch = n;
                                self.pos += 1;
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_ascii_digit() {
                while let Some(d) = self.peek().filter(|c| c.is_ascii_digit()) {
                    name.push(d);
                    self.pos += 1;
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.pos += 1;
                return ch.to_string();
            }
            if !ch.is_alphanumeric() && ch != '_' {
                break;
            }
            name.push(ch);
            self.pos += 1;
        }
        name
    }

    fn process_dollar(&mut self) -> Result<String, ShellError> {
        if self.depth >= MAX_NESTING {
            return err(format!(
                "variable substitutions nested more than {MAX_NESTING} deep"
            ));
        }
        self.depth += 1;
        let r = self.process_dollar_inner();
        self.depth -= 1;
        r
    }

    fn process_dollar_inner(&mut self) -> Result<String, ShellError> {
        self.pos += 1; // '$'
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset => format!("${name}"),
                None => String::new(),
            });
        }
        self.pos += 1; // '{'
        match self.peek() {
            None => return err("syntax error: missing '}'"),
            Some('{' | '}' | ':') => return err("syntax error: bad substitution"),
            _ => {}
        }
        let name = self.process_name();
        let Some(mut ch) = self.next() else {
            return err("syntax error: missing '}'");
        };
        let mut chs = ch.to_string();
        let mut null_is_unset = false;
        match ch {
            '}' => Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                if ch == ':' {
                    null_is_unset = true;
                    match self.next() {
                        Some(c) => {
                            ch = c;
                            chs.push(c);
                        }
                        None => return err("syntax error: missing '}'"),
                    }
                }
                let raw = ch == '#' || ch == '%';
                if null_is_unset && raw {
                    return err(format!("unsupported modifier ({chs}) in substitution"));
                }
                let word = match self.process_stop_on(Some('}'), raw) {
                    Ok((w, _)) => w,
                    Err(_) if self.peek().is_none() => return err("syntax error: missing '}'"),
                    Err(e) => return Err(e),
                };
                let value = self.get_env(&name);
                if self.lex.skip_unset && value.is_none() {
                    return Ok(format!("${{{name}{chs}{word}}}"));
                }
                let empty = value
                    .as_deref()
                    .is_none_or(|v| null_is_unset && v.is_empty());
                match ch {
                    '-' => Ok(if empty {
                        word
                    } else {
                        value.unwrap_or_default()
                    }),
                    '+' => Ok(if empty { String::new() } else { word }),
                    '?' => match value {
                        None => err(format!(
                            "{name}: {}",
                            if word.is_empty() {
                                "is not allowed to be unset"
                            } else {
                                &word
                            }
                        )),
                        Some(v) if null_is_unset && v.is_empty() => err(format!(
                            "{name}: {}",
                            if word.is_empty() {
                                "is not allowed to be empty"
                            } else {
                                &word
                            }
                        )),
                        Some(v) => Ok(v),
                    },
                    '#' | '%' => {
                        let value = value.unwrap_or_default();
                        let (greedy, pat) = match word.strip_prefix(ch) {
                            Some(rest) => (true, rest.to_string()),
                            None => (false, word),
                        };
                        if ch == '%' {
                            trim_suffix(&pat, &value, greedy)
                        } else {
                            trim_prefix(&pat, &value, greedy)
                        }
                    }
                    _ => err(format!("unsupported modifier ({chs}) in substitution")),
                }
            }
            '/' => {
                let replace_all = self.peek() == Some('/');
                if replace_all {
                    self.pos += 1;
                }
                let pattern = match self.process_stop_on(Some('/'), true) {
                    Ok((w, _)) => w,
                    Err(_) if self.peek().is_none() => {
                        return err("syntax error: missing '/' in ${}");
                    }
                    Err(e) => return Err(e),
                };
                let replacement = match self.process_stop_on(Some('}'), true) {
                    Ok((w, _)) => w,
                    Err(_) if self.peek().is_none() => return err("syntax error: missing '}'"),
                    Err(e) => return Err(e),
                };
                let value = self.get_env(&name);
                if self.lex.skip_unset && value.is_none() {
                    return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
                }
                let value = value.unwrap_or_default();
                let re = pattern_to_regex(&pattern, true, false)?;
                let rep = regex::NoExpand(&replacement);
                Ok(if replace_all {
                    re.replace_all(&value, rep).into_owned()
                } else {
                    re.replace(&value, rep).into_owned()
                })
            }
            _ => err(format!("unsupported modifier ({chs}) in substitution")),
        }
    }
}

/// Converts a shell pattern (`*`, `?`, `\` escapes) into a regular expression.
fn pattern_to_regex(
    pattern: &str,
    greedy: bool,
    anchored: bool,
) -> Result<regex::Regex, ShellError> {
    let mut out = String::with_capacity(pattern.len() + 4);
    if anchored {
        out.push('^');
    }
    let star = if greedy { ".*" } else { ".*?" };
    let mut chars = pattern.chars().peekable();
    while let Some(tok) = chars.next() {
        match tok {
            '*' => out.push_str(star),
            '?' => out.push('.'),
            '\\' => {
                // `}` and `/` are escaped only to get them into ${}; the escape is not pattern.
                match chars.peek() {
                    Some('}' | '/') => continue,
                    Some(&c @ ('*' | '?' | '\\')) => {
                        chars.next();
                        out.push('\\');
                        out.push(c);
                    }
                    other => {
                        return err(format!(
                            "invalid pattern ({pattern}) in substitution: invalid escape '\\{}'",
                            other.map(|c| c.to_string()).unwrap_or_default()
                        ));
                    }
                }
            }
            c => {
                let mut buf = [0u8; 4];
                out.push_str(&regex::escape(c.encode_utf8(&mut buf)));
            }
        }
    }
    regex::Regex::new(&out).map_err(|e| ShellError {
        message: format!("invalid pattern ({pattern}) in substitution: {e}"),
    })
}

fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, ShellError> {
    let re = pattern_to_regex(pattern, greedy, true)?;
    Ok(match re.find(value) {
        Some(m) => value[m.end()..].to_string(),
        None => value.to_string(),
    })
}

/// Reverses a pattern, keeping each escape in front of the character it escapes.
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out: Vec<char> = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\\' && i + 1 < chars.len() {
            out.push(chars[i + 1]);
            out.push('\\');
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out.reverse();
    out.into_iter().collect()
}

fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, ShellError> {
    // Regular expressions find leftmost matches: reverse both to find the rightmost one.
    let rev: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &rev, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("a b".into()),
            "E" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn basics() {
        assert_eq!(expand_word("x${A}y", &env).unwrap(), "xa by");
        assert_eq!(
            split_words("x${A}y \"$A\"", &env).unwrap(),
            vec!["xa", "by", "a b"]
        );
        assert_eq!(expand_word("${E:-d}${U-u}", &env).unwrap(), "du");
        assert!(
            expand_word("${U:?gone}", &env)
                .unwrap_err()
                .message
                .contains("U: gone")
        );
        assert!(expand_word("'open", &env).is_err());
    }

    #[test]
    fn skip_unset_keeps_references() {
        let mut lex = Lexer::new('\\');
        lex.skip_unset = true;
        assert_eq!(
            lex.expand_word("$U ${U} ${U:-x} $A", &env).unwrap(),
            "$U ${U} ${U:-x} a b"
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}x{}", "${a:-".repeat(10_000), "}".repeat(10_000));
        assert!(
            expand_word(&deep, &env)
                .unwrap_err()
                .message
                .contains("nested")
        );
        let ok = format!("{}x{}", "${a:-".repeat(10), "}".repeat(10));
        assert_eq!(expand_word(&ok, &env).unwrap(), "x");
    }

    #[test]
    fn patterns() {
        let v = |n: &str| (n == "F").then(|| "a/b/c.tar.gz".to_string());
        assert_eq!(expand_word("${F%%.*}", &v).unwrap(), "a/b/c");
        assert_eq!(expand_word("${F%.*}", &v).unwrap(), "a/b/c.tar");
        assert_eq!(expand_word("${F##*/}", &v).unwrap(), "c.tar.gz");
        assert_eq!(expand_word("${F#*/}", &v).unwrap(), "b/c.tar.gz");
        assert_eq!(expand_word("${F//\\//_}", &v).unwrap(), "a_b_c.tar.gz");
    }
}
