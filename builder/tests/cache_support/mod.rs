//! Helpers shared by the cache tests: real gzip'd tar layers and step inputs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;

use strata_builder::cache::{KeyInputs, StepKind};
use strata_builder::image::deliver::LayerDescriptor;
use strata_builder::image::digest::Digest;
use strata_builder::image::store::BlobStore;

/// Writes a gzip'd tar layer holding `path` with `content` into `store`.
pub fn make_layer(store: &BlobStore, path: &str, content: &[u8]) -> LayerDescriptor {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, path, content).unwrap();
    let tar = tar.into_inner().unwrap();
    let diff_id = Digest::of(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let blob = gz.finish().unwrap();
    let digest = store.put(&blob).unwrap();
    LayerDescriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".to_string(),
        digest,
        size: blob.len() as u64,
        diff_id,
    }
}

/// The inputs of step `n` of a small Dockerfile, chained on `parent`.
pub fn step(n: usize, parent: Option<&KeyInputs>, arg: &str) -> KeyInputs {
    KeyInputs {
        kind: StepKind::Run,
        base: "sha256:0000000000000000000000000000000000000000000000000000000000000001".to_string(),
        parent: parent.map(|p| p.key()),
        instruction: format!("RUN echo step {n} > /step{n}"),
        args: BTreeMap::from([("VERSION".to_string(), arg.to_string())]),
        env: BTreeMap::from([("PATH".to_string(), "/bin".to_string())]),
        sources: BTreeMap::new(),
    }
}

/// A chain of `n` steps.
pub fn chain(n: usize, arg: &str) -> Vec<KeyInputs> {
    let mut out: Vec<KeyInputs> = Vec::new();
    for i in 0..n {
        let s = step(i, out.last(), arg);
        out.push(s);
    }
    out
}

/// Entries of `dir` whose names start with `prefix`, recursively.
pub fn leftovers(dir: &std::path::Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with(prefix) {
            out.push(p.clone());
        }
        if p.is_dir() {
            out.extend(leftovers(&p, prefix));
        }
    }
    out
}
