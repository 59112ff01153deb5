//! The Dockerfile front end: text to typed, validated instructions.
//!
//! - [`parse`]`(text, file) -> Result<Dockerfile, Diagnostic>`: the whole pipeline. Every
//!   error is a [`Diagnostic`] naming file, line and column, quoting the line with a caret and
//!   saying what was expected.
//! - [`Instruction`]: one enum variant per instruction with flags parsed; each carries its
//!   [`Source`] (line range, original text for image history's `created_by`).
//! - [`Instruction::expand`]: the fields Docker expands, expanded with a variable lookup.
//! - [`shell::expand_word`] / [`shell::split_words`]: BuildKit's shell lexer.
//!
//! Layers: [`raw`] (directives, continuations, heredocs, argument splitting; BuildKit's
//! `parser`), [`instruction`] (typed instructions; BuildKit's `instructions`), [`shell`]
//! (expansion), [`flags`], [`heredoc`], [`directives`], [`diagnostic`].

pub mod diagnostic;
pub mod directives;
pub mod flags;
pub mod heredoc;
pub mod instruction;
pub mod raw;
pub mod shell;

use std::path::{Path, PathBuf};

pub use diagnostic::Diagnostic;
pub use heredoc::Heredoc;
pub use instruction::{
    Add, Arg, ArgDecl, Cmd, Command, Copy, Entrypoint, Env, Expose, Files, From, HealthConfig,
    Healthcheck, InlineSource, Instruction, KeyValue, Label, Maintainer, Network, Onbuild, Run,
    Security, Shell, Source, Stopsignal, User, Volume, Workdir,
};
pub use shell::{ShellError, expand_word, split_words};

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub file: PathBuf,
    /// The escape character (`\` unless `# escape=` says otherwise).
    pub escape: char,
    /// The `# syntax=` directive's value, if any (strata builds with its own front end and
    /// only reports it).
    pub syntax: Option<String>,
    /// The `# check=` directive's value, if any.
    pub check: Option<String>,
    /// All instructions in file order, including the ARGs before the first FROM.
    pub instructions: Vec<Instruction>,
    /// Non-fatal findings, already formatted with file and line.
    pub warnings: Vec<String>,
}

/// Parses Dockerfile text. `file` is used in error messages and instruction sources.
pub fn parse(text: &str, file: &Path) -> Result<Dockerfile, Diagnostic> {
    let tree = raw::parse(text).map_err(|e| {
        let mut d = Diagnostic::at_line(
            file,
            text.strip_prefix('\u{feff}').unwrap_or(text),
            e.line,
            e.message,
        );
        d.column = e.column;
        d.expected = e.expected;
        d
    })?;
    let lines = raw::physical_lines(text.strip_prefix('\u{feff}').unwrap_or(text));
    let mut instructions = Vec::with_capacity(tree.nodes.len());
    for node in &tree.nodes {
        let from = node.start_line.saturating_sub(1).min(lines.len());
        let to = node.end_line.min(lines.len()).max(from);
        let node_text = lines[from..to].join("\n");
        instructions.push(Instruction::from_node(node, file, &node_text, tree.escape)?);
    }
    let directive = |name: &str| {
        tree.directives
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.value.clone())
    };
    Ok(Dockerfile {
        file: file.to_path_buf(),
        escape: tree.escape,
        syntax: directive("syntax"),
        check: directive("check"),
        instructions,
        warnings: tree
            .warnings
            .iter()
            .map(|w| format!("{}:{}: {}", file.display(), w.line, w.message))
            .collect(),
    })
}

/// Reads and parses a Dockerfile from disk.
pub fn parse_file(file: &Path) -> Result<Dockerfile, Diagnostic> {
    let bytes = std::fs::read(file).map_err(|e| Diagnostic {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        message: format!("cannot read the Dockerfile: {e}"),
        line_text: None,
        expected: None,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        Diagnostic {
            file: file.to_path_buf(),
            line,
            column: 0,
            message: "the Dockerfile is not valid UTF-8".into(),
            line_text: None,
            expected: Some("UTF-8 text".into()),
        }
    })?;
    parse(&text, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_typed() {
        let df = parse("ARG V=1\nFROM alpine:${V} AS Build\nRUN --network=none echo hi\nCOPY --from=build a b\n", Path::new("Dockerfile")).unwrap();
        assert_eq!(df.instructions.len(), 4);
        match &df.instructions[1] {
            Instruction::From(f) => assert_eq!(f.name.as_deref(), Some("build")),
            other => panic!("{other:?}"),
        }
        let expanded = df.instructions[1]
            .expand(&|n| (n == "V").then(|| "3.20".to_string()))
            .unwrap();
        match expanded {
            Instruction::From(f) => assert_eq!(f.image, "alpine:3.20"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_have_location() {
        let e = parse("FROM a\nCOPY --form=x a b\n", Path::new("Dockerfile")).unwrap_err();
        assert_eq!((e.line, e.column), (2, 6));
        assert!(e.to_string().contains("unknown flag: --form"), "{e}");
        let e = parse("FROM a\nFOO bar\n", Path::new("D")).unwrap_err();
        assert!(
            e.to_string().starts_with("D:2:1: unknown instruction: FOO"),
            "{e}"
        );
    }
}
