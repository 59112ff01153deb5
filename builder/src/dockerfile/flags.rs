//! Instruction flags (`--from=x`, `--link`, `--mount=...`): declared per instruction, parsed
//! with BuildKit's rules. A string flag needs `=` (`--f=` gives ""), a bool flag accepts
//! `--b`, `--b=true`, `--b=false`, a list flag may repeat, a bare `--` ends the flags, and an
//! undeclared flag is an error.

use std::collections::BTreeMap;

/// The kind of value a flag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    Bool,
    String,
    /// A string that may be given several times.
    Strings,
}

/// A parsed flag value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlagValue {
    Bool(bool),
    String(String),
    Strings(Vec<String>),
}

/// A flag error: the offending word and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagError {
    pub word: String,
    pub message: String,
    pub expected: String,
}

/// The flags given to one instruction, by name, in the order first given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    values: BTreeMap<String, FlagValue>,
    used: Vec<String>,
}

impl Flags {
    /// Names of the flags that were given.
    pub fn used(&self) -> &[String] {
        &self.used
    }
    pub fn get(&self, name: &str) -> Option<&FlagValue> {
        self.values.get(name)
    }
    pub fn string(&self, name: &str) -> Option<String> {
        match self.values.get(name) {
            Some(FlagValue::String(s)) => Some(s.clone()),
            _ => None,
        }
    }
    pub fn bool(&self, name: &str) -> Option<bool> {
        match self.values.get(name) {
            Some(FlagValue::Bool(b)) => Some(*b),
            _ => None,
        }
    }
    pub fn strings(&self, name: &str) -> Vec<String> {
        match self.values.get(name) {
            Some(FlagValue::Strings(v)) => v.clone(),
            _ => Vec::new(),
        }
    }
}

fn describe(spec: &[(&str, FlagKind)]) -> String {
    if spec.is_empty() {
        return "no flags".into();
    }
    let names: Vec<String> = spec
        .iter()
        .map(|(n, k)| match k {
            FlagKind::Bool => format!("--{n}"),
            _ => format!("--{n}=<value>"),
        })
        .collect();
    format!("one of {}", names.join(", "))
}

/// Parses flag words against the declared flags.
pub fn parse(words: &[String], spec: &[(&str, FlagKind)]) -> Result<Flags, FlagError> {
    let mut flags = Flags::default();
    let fail = |word: &str, message: String| FlagError {
        word: word.to_string(),
        message,
        expected: describe(spec),
    };
    for word in words {
        let Some(arg) = word.strip_prefix("--") else {
            return Err(fail(word, format!("arg should start with -- : {word}")));
        };
        if arg.is_empty() {
            break;
        }
        let (name, value) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (arg, None),
        };
        let Some(&(_, kind)) = spec.iter().find(|(n, _)| *n == name) else {
            return Err(fail(word, format!("unknown flag: --{name}")));
        };
        if flags.values.contains_key(name) && kind != FlagKind::Strings {
            return Err(fail(word, format!("duplicate flag specified: --{name}")));
        }
        let new = match (kind, value) {
            (FlagKind::Bool, None) => FlagValue::Bool(true),
            (FlagKind::Bool, Some("")) => {
                return Err(fail(word, format!("missing a value on flag: --{name}")));
            }
            (FlagKind::Bool, Some(v)) => match v.to_ascii_lowercase().as_str() {
                "true" => FlagValue::Bool(true),
                "false" => FlagValue::Bool(false),
                _ => {
                    return Err(fail(
                        word,
                        format!("expecting boolean value for flag --{name}, not: {v}"),
                    ));
                }
            },
            (_, None) => return Err(fail(word, format!("missing a value on flag: --{name}"))),
            (FlagKind::String, Some(v)) => FlagValue::String(v.to_string()),
            (FlagKind::Strings, Some(v)) => {
                let mut list = flags.strings(name);
                list.push(v.to_string());
                FlagValue::Strings(list)
            }
        };
        if !flags.used.iter().any(|u| u == name) {
            flags.used.push(name.to_string());
        }
        flags.values.insert(name.to_string(), new);
    }
    Ok(flags)
}

/// Parses a Go duration (`1h2m3.5s`, `300ms`, `0`), as HEALTHCHECK's flags take.
pub fn parse_go_duration(s: &str) -> Result<i128, String> {
    // Result in nanoseconds.
    let bad = || format!("invalid duration {s:?}");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_end];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(bad());
        }
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("missing unit in duration {s:?}")),
            _ => return Err(format!("unknown unit {unit:?} in duration {s:?}")),
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        let int: i128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let mut value = int.checked_mul(scale).ok_or_else(bad)?;
        let mut div = 1i128;
        for d in frac.chars().take(18) {
            div *= 10;
            value += (d as i128 - '0' as i128) * scale / div;
        }
        total = total.checked_add(value).ok_or_else(bad)?;
        if total > i64::MAX as i128 {
            return Err(bad());
        }
    }
    Ok(if neg { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("1m30s").unwrap(), 90_000_000_000);
        assert_eq!(parse_go_duration("1.5ms").unwrap(), 1_500_000);
        assert_eq!(parse_go_duration("0").unwrap(), 0);
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("1x").is_err());
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("99999999999999999999h").is_err());
    }
}
