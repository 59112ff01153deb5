//! Skip policy for tests that need root, /dev/fuse or a tool from Debian.
//!
//! Where the requirement is missing the test prints why and returns early;
//! under CI (`CI=true`) a missing requirement fails the test instead, since CI
//! runs on a machine that has everything.

use std::path::Path;

/// True when running under CI, where skipping is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// Reports a missing requirement: panics under CI, otherwise prints a skip
/// message. Returns false so a test can `if !require::...() { return; }`.
pub fn missing(test: &str, what: &str) -> bool {
    if in_ci() {
        panic!("{test}: {what}; CI=true, so this is a failure, not a skip");
    }
    eprintln!("SKIP {test}: {what}");
    false
}

pub fn root(test: &str) -> bool {
    nix::unistd::geteuid().is_root() || missing(test, "needs root")
}

pub fn fuse(test: &str) -> bool {
    if !Path::new("/dev/fuse").exists() {
        return missing(test, "needs /dev/fuse");
    }
    root(test)
}

/// Requires a program on PATH (installed by scripts/test.sh).
pub fn tool(test: &str, program: &str) -> bool {
    crate::tools::which(program).is_some() || missing(test, &format!("needs `{program}` on PATH"))
}
