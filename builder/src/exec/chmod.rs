//! COPY/ADD `--chmod`: an octal mode (`0755`) or, as BuildKit accepts since
//! Dockerfile 1.14, chmod(1)'s symbolic modes (`u=rwx,go=rx`, `+x`, `a-w`,
//! `u+X`), applied to each copied file from its own mode.

use anyhow::Result;

/// A parsed `--chmod` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    Octal(u32),
    Symbolic(Vec<Clause>),
}

/// One `who op perms` action of a symbolic mode, such as `go-w`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// The u/g/o bit groups affected, as a mask over 0o777 plus special bits.
    who: u32,
    op: char,
    perms: Perms,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Perms {
    /// `r`, `w`, `x`, `X`, `s`, `t` letters.
    Letters { bits: u32, cond_exec: bool },
    /// `u`, `g` or `o`: copy that class's current bits.
    Copy(char),
}

const USER: u32 = 0o4700;
const GROUP: u32 = 0o2070;
const OTHER: u32 = 0o1007;

impl Chmod {
    /// Parses a `--chmod` value.
    pub fn parse(value: &str) -> Result<Chmod> {
        let bad = || anyhow::anyhow!("--chmod={value}: expected an octal mode such as 0755 or a symbolic one such as u=rwx,go=rx");
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            return match u32::from_str_radix(value, 8) {
                Ok(mode) if mode <= 0o7777 => Ok(Chmod::Octal(mode)),
                _ => Err(bad()),
            };
        }
        let mut clauses = Vec::new();
        for part in value.split(',') {
            let who_len = part.find(['+', '-', '=']).ok_or_else(bad)?;
            let mut who = 0;
            for c in part[..who_len].chars() {
                who |= match c {
                    'u' => USER,
                    'g' => GROUP,
                    'o' => OTHER,
                    'a' => USER | GROUP | OTHER,
                    _ => return Err(bad()),
                };
            }
            if who == 0 {
                who = USER | GROUP | OTHER;
            }
            // One or more `op perms` actions: `u+r-w`.
            let mut rest = &part[who_len..];
            while let Some(op) = rest.chars().next() {
                if !matches!(op, '+' | '-' | '=') {
                    return Err(bad());
                }
                rest = &rest[1..];
                let end = rest.find(['+', '-', '=']).unwrap_or(rest.len());
                let perms = parse_perms(&rest[..end]).ok_or_else(bad)?;
                rest = &rest[end..];
                clauses.push(Clause { who, op, perms });
            }
        }
        if clauses.is_empty() {
            return Err(bad());
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The mode a file whose mode is `mode` gets.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let clauses = match self {
            Chmod::Octal(m) => return *m,
            Chmod::Symbolic(c) => c,
        };
        let mut mode = mode & 0o7777;
        for c in clauses {
            let bits = match &c.perms {
                Perms::Letters { bits, cond_exec } => {
                    let exec = if *cond_exec && (is_dir || mode & 0o111 != 0) { 0o111 } else { 0 };
                    (bits | exec) & c.who
                }
                Perms::Copy(class) => {
                    let rwx = match class {
                        'u' => (mode >> 6) & 7,
                        'g' => (mode >> 3) & 7,
                        _ => mode & 7,
                    };
                    (rwx << 6 | rwx << 3 | rwx) & c.who & 0o777
                }
            };
            mode = match c.op {
                '+' => mode | bits,
                '-' => mode & !bits,
                _ => (mode & !c.who) | bits,
            };
        }
        mode
    }
}

fn parse_perms(s: &str) -> Option<Perms> {
    if let [class @ ('u' | 'g' | 'o')] = s.chars().collect::<Vec<_>>().as_slice() {
        return Some(Perms::Copy(*class));
    }
    let mut bits = 0;
    let mut cond_exec = false;
    for c in s.chars() {
        match c {
            'r' => bits |= 0o444,
            'w' => bits |= 0o222,
            'x' => bits |= 0o111,
            'X' => cond_exec = true,
            's' => bits |= 0o6000,
            't' => bits |= 0o1000,
            _ => return None,
        }
    }
    Some(Perms::Letters { bits, cond_exec })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(s: &str, mode: u32, dir: bool) -> u32 {
        Chmod::parse(s).unwrap().apply(mode, dir)
    }

    #[test]
    fn octal_modes() {
        assert_eq!(Chmod::parse("755").unwrap(), Chmod::Octal(0o755));
        assert_eq!(Chmod::parse("0644").unwrap().apply(0o777, false), 0o644);
        assert!(Chmod::parse("17777").is_err());
        assert!(Chmod::parse("8").is_err());
    }

    #[test]
    fn symbolic_modes_as_chmod_1() {
        assert_eq!(sym("u=rwx,go=rx", 0o600, false), 0o755);
        assert_eq!(sym("+x", 0o644, false), 0o755);
        assert_eq!(sym("a-w", 0o664, false), 0o444);
        assert_eq!(sym("go-rwx", 0o755, false), 0o700);
        assert_eq!(sym("u+s", 0o755, false), 0o4755);
        assert_eq!(sym("o+t", 0o777, true), 0o1777);
        assert_eq!(sym("g=u", 0o740, false), 0o770);
        assert_eq!(sym("u+r-w", 0o200, false), 0o400);
        // X: execute only for directories and files already executable by someone.
        assert_eq!(sym("a+X", 0o644, false), 0o644);
        assert_eq!(sym("a+X", 0o744, false), 0o755);
        assert_eq!(sym("a+X", 0o644, true), 0o755);
    }

    #[test]
    fn bad_modes_are_refused() {
        for bad in ["", "u", "z+x", "u+q", "u+x,", "rwx", "u+gw"] {
            assert!(Chmod::parse(bad).is_err(), "{bad}");
        }
    }
}
