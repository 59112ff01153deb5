//! Shared by the hostile_* tests: read what a build wrote, and run strata
//! with a time limit (a hostile input must never make it hang).
#![allow(dead_code)]

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// The layer blobs of the only image in an OCI layout, oldest first, as
/// streams of their uncompressed tars.
pub fn layers(layout: &Path) -> Vec<Box<dyn Read>> {
    let blob = |d: &serde_json::Value| {
        layout
            .join("blobs/sha256")
            .join(d.as_str().unwrap().trim_start_matches("sha256:"))
    };
    let index = read_json(&layout.join("index.json"));
    let manifest = read_json(&blob(&index["manifests"][0]["digest"]));
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let mut f = std::io::BufReader::new(std::fs::File::open(blob(&l["digest"])).unwrap());
            let gzip = std::io::BufRead::fill_buf(&mut f)
                .unwrap()
                .starts_with(&[0x1f, 0x8b]);
            let r: Box<dyn Read> = if gzip {
                Box::new(flate2::bufread::MultiGzDecoder::new(f))
            } else {
                Box::new(f)
            };
            r
        })
        .collect()
}

/// Whether a stream holds `needle`, read in bounded memory.
pub fn stream_contains(mut r: impl Read, needle: &[u8]) -> bool {
    let mut buf = vec![0u8; 1 << 20];
    let mut keep = 0;
    loop {
        let n = r.read(&mut buf[keep..]).unwrap();
        if n == 0 {
            return false;
        }
        let end = keep + n;
        if buf[..end].windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        keep = (needle.len() - 1).min(end);
        buf.copy_within(end - keep..end, 0);
    }
}

/// A file's content from a layer tar stream, if it is there.
pub fn file_in_layer(layer: impl Read, name: &str) -> Option<String> {
    let mut archive = tar::Archive::new(layer);
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy().trim_start_matches("./") == name {
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            return Some(s);
        }
    }
    None
}

/// A file from the last layer of the layout's image (a final RUN's report).
pub fn last_layer_file(layout: &Path, name: &str) -> String {
    let last = layers(layout).pop().unwrap();
    file_in_layer(last, name)
        .unwrap_or_else(|| panic!("{name} not in the last layer of {}", layout.display()))
}

/// The ERRO lines of a strata log.
pub fn error_line(log: &str) -> String {
    log.lines()
        .filter(|l| l.starts_with("ERRO"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs strata with `args` in `cwd`, killing it (and failing the test) if
/// it runs longer than `limit`.
pub fn strata_within(args: &[String], cwd: &Path, limit: Duration) -> Output {
    // Files, not pipes: a full pipe would stall strata and look like a hang.
    let (stdout, stderr) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
    let mut child = Command::new(strata_tests::strata_bin())
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().unwrap())
        .stderr(stderr.try_clone().unwrap())
        .spawn()
        .expect("running strata");
    let read = |mut f: &std::fs::File| {
        use std::io::Seek;
        let mut v = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    };
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Output {
                status,
                stdout: read(&stdout),
                stderr: read(&stderr),
            };
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "strata {args:?} still running after {limit:?}:\n{}",
                String::from_utf8_lossy(&read(&stderr))
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The peak RSS, in MiB, of the largest child this test process has waited for.
pub fn children_peak_rss_mib() -> u64 {
    let mut usage: nix::libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: usage is a valid rusage for getrusage to fill.
    assert_eq!(
        unsafe { nix::libc::getrusage(nix::libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    usage.ru_maxrss as u64 / 1024
}
