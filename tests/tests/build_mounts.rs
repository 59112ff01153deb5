//! RUN --mount of each type through a whole build: what a mount brings in is
//! used by the step but is never part of a layer; the cache persists between
//! steps; the secret's content appears in no layer, config, log or work
//! directory file (cache included); --network=none leaves only loopback.

mod build_support;

use std::io::Read;
use std::path::Path;

use build_support::*;

const SECRET: &str = "s3cr3t-v4lue-that-must-not-leak";

fn sha256_hex(data: &[u8]) -> String {
    let out = strata_tests::tools::run_ok(
        std::process::Command::new("sh").arg("-c").arg(format!("printf '%s' '{}' | sha256sum", String::from_utf8_lossy(data))),
    );
    out[..64].to_string()
}

/// Every file under `dir`, decompressed when it is gzip, as bytes.
fn contents_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                let bytes = std::fs::read(&p).unwrap_or_default();
                let mut plain = Vec::new();
                if bytes.starts_with(&[0x1f, 0x8b]) && flate2_decode(&bytes, &mut plain) {
                    out.push((p.clone(), plain));
                }
                out.push((p, bytes));
            }
        }
    }
    out
}

fn flate2_decode(bytes: &[u8], out: &mut Vec<u8>) -> bool {
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut stdin, &data);
    });
    let _ = child.stdout.take().unwrap().read_to_end(out);
    let _ = writer.join();
    child.wait().map(|s| s.success()).unwrap_or(false)
}

#[test]
fn run_mounts_bring_things_in_without_leaking_them() {
    if !requirements("run_mounts_bring_things_in_without_leaking_them") {
        return;
    }
    let s = Scratch::new();
    let work = s.work();
    let layout = s.path().join("oci");
    let secret_file = s.path().join("token");
    std::fs::write(&secret_file, SECRET).unwrap();
    let out = strata(
        &args(&[
            "--context", fixture("build/mounts").to_str().unwrap(),
            "--build-context", &s.base_context(), "--no-push",
            "--oci-layout-path", layout.to_str().unwrap(), "--image-format=oci",
            "--secret", &format!("id=token,src={}", secret_file.display()),
            "--kaniko-dir", work.to_str().unwrap(),
        ]),
        s.path(),
        &[],
    );
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    assert!(!log.contains(SECRET), "the secret appears in the log");

    let root = unpack(&layout, "latest", &s.path().join("bundle"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("copied-from-bind.txt"), "bound input\n");
    assert_eq!(read("from-stage.txt"), "from-stage\n");
    assert_eq!(read("cache-again.txt"), "cached\n", "the cache persists between steps");
    assert_eq!(read("tmpfs-list.txt"), "x\n");
    assert_eq!(read("secret-hash.txt").trim(), sha256_hex(SECRET.as_bytes()));
    assert_eq!(read("secret-env-ok.txt"), "env-ok\n");
    assert_eq!(read("net-interfaces.txt"), "1\n", "--network=none: only loopback");
    for gone in ["mnt/input.txt", "mnt/data", "cache/entry", "scratch/x", "run/secrets/token", "data"] {
        assert!(!root.join(gone).exists(), "/{gone} must not be in the image");
    }
    // The secret is in no blob of the image and no file the work directory keeps.
    for (path, bytes) in contents_under(&layout).into_iter().chain(contents_under(&work)) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(SECRET), "the secret leaked into {}", path.display());
    }
    assert!(leftover_builds(&work).is_empty());
    assert!(work.join("run-cache").exists(), "the cache mount persists in the work directory");
}
