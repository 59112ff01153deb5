//! The .dockerignore matcher against Docker's documented examples
//! (docs.docker.com, "Build context" / ".dockerignore files").

use std::path::Path;

use strata_builder::dockerignore::Matcher;

fn m(text: &str) -> Matcher {
    Matcher::parse(text).expect("valid .dockerignore")
}

fn excluded(m: &Matcher, path: &str) -> bool {
    m.matches(Path::new(path))
}

#[test]
fn documented_example_patterns() {
    let ig = m("# comment\n*/temp*\n*/*/temp*\ntemp?\n");
    assert!(excluded(&ig, "somedir/temporary.txt"));
    assert!(excluded(&ig, "somedir/temp"));
    assert!(excluded(&ig, "somedir/subdir/temporary.txt"));
    assert!(excluded(&ig, "tempa"));
    assert!(excluded(&ig, "tempb"));
    assert!(!excluded(&ig, "temp"));
    assert!(
        !excluded(&ig, "temporary.txt"),
        "*/temp* only matches one level down"
    );
    assert!(!excluded(&ig, "a/b/c/temp1"));
    assert!(!excluded(&ig, "# comment"));
}

#[test]
fn double_star_matches_any_depth() {
    let ig = m("**/*.go\n");
    assert!(excluded(&ig, "main.go"));
    assert!(excluded(&ig, "a/b/c/x.go"));
    assert!(!excluded(&ig, "a/b/c/x.rs"));
    let ig = m("a/**\n");
    assert!(excluded(&ig, "a/x"));
    assert!(excluded(&ig, "a/x/y"));
    let ig = m("a/**/b\n");
    assert!(excluded(&ig, "a/b"));
    assert!(excluded(&ig, "a/x/y/b"));
    assert!(!excluded(&ig, "c/b"));
}

#[test]
fn exceptions_last_match_wins() {
    let ig = m("*.md\n!README.md\n");
    assert!(excluded(&ig, "CHANGELOG.md"));
    assert!(!excluded(&ig, "README.md"));

    let ig = m("*.md\n!README*.md\nREADME-secret.md\n");
    assert!(excluded(&ig, "CHANGELOG.md"));
    assert!(!excluded(&ig, "README-public.md"));
    assert!(excluded(&ig, "README-secret.md"));

    let ig = m("*.md\nREADME-secret.md\n!README*.md\n");
    assert!(
        !excluded(&ig, "README-secret.md"),
        "the middle line has no effect"
    );
    assert!(!excluded(&ig, "README.md"));
    assert!(excluded(&ig, "notes.md"));
}

#[test]
fn directories_exclude_their_contents() {
    let ig = m("node_modules\nbuild/\n");
    assert!(excluded(&ig, "node_modules"));
    assert!(excluded(&ig, "node_modules/x/y.js"));
    assert!(excluded(&ig, "build/out.o"));
    assert!(
        !excluded(&ig, "src/node_modules"),
        "patterns are anchored at the context root"
    );
}

#[test]
fn leading_slash_and_dot_are_normalised() {
    for text in [
        "/secret\n",
        "./secret\n",
        "secret/\n",
        "  secret  \n",
        "./a/../secret\n",
    ] {
        let ig = m(text);
        assert!(excluded(&ig, "secret"), "{text:?}");
        assert!(excluded(&ig, "secret/key"), "{text:?}");
        assert!(!excluded(&ig, "other"), "{text:?}");
    }
    assert!(excluded(&m("x\n"), "./x"));
    assert!(excluded(&m("x\n"), "/x"));
}

#[test]
fn dockerfile_and_dockerignore_can_be_excluded() {
    let ig = m("Dockerfile\n.dockerignore\n");
    assert!(excluded(&ig, "Dockerfile"));
    assert!(excluded(&ig, ".dockerignore"));
}

#[test]
fn walker_descends_only_where_an_exception_may_reinclude() {
    let ig = m("vendor\n!vendor/keep/**\n");
    assert!(excluded(&ig, "vendor/drop/x"));
    assert!(!excluded(&ig, "vendor/keep/x"));
    assert!(ig.may_reinclude_under(Path::new("vendor")));
    assert!(ig.may_reinclude_under(Path::new("vendor/keep")));
    assert!(!ig.may_reinclude_under(Path::new("vendor/drop")));
    let ig = m("logs\n");
    assert!(!ig.may_reinclude_under(Path::new("logs")));
    let ig = m("*\n!**/*.txt\n");
    assert!(ig.may_reinclude_under(Path::new("any/dir")));
    assert!(!excluded(&ig, "any/dir/a.txt"));
}

#[test]
fn comments_escapes_and_errors() {
    let ig = m("#not-a-pattern\n\\#hash\nx\\*y\n");
    assert!(!excluded(&ig, "#not-a-pattern"));
    assert!(excluded(&ig, "#hash"));
    assert!(excluded(&ig, "x*y"));
    assert!(!excluded(&ig, "xay"));
    let err = Matcher::parse("ok\n!\n").unwrap_err();
    assert_eq!(err.line, 2);
    assert!(Matcher::parse("[unclosed\n").is_err());
}

#[test]
fn load_reads_the_context_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(
        Matcher::load(dir.path())
            .expect("no file is fine")
            .is_empty()
    );
    std::fs::write(
        dir.path().join(".dockerignore"),
        "\u{feff}*.log\n!keep.log\n",
    )
    .expect("write");
    let ig = Matcher::load(dir.path()).expect("load");
    assert!(excluded(&ig, "a.log"));
    assert!(!excluded(&ig, "keep.log"));
}
