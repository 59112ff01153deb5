//! Shared harness for strata's end-to-end tests: the `strata` binary, a real
//! registry on loopback, locally made base images, independent inspection
//! tools (skopeo, umoci), and the skip policy for tests that need root or FUSE.

pub mod faultproxy;
pub mod fixtures;
pub mod registry;
pub mod require;
pub mod tools;

use std::path::{Path, PathBuf};

/// The repository's root folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Path of the `strata` binary built alongside the test binaries.
///
/// Test binaries live in `target/<profile>/deps/`; the binary is
/// `target/<profile>/strata`. The test command (scripts/test.sh) builds it
/// before running the tests.
pub fn strata_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let bin = profile_dir.join("strata");
    assert!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build -p strata-builder --bin strata` (scripts/test.sh does)",
        bin.display()
    );
    bin
}
