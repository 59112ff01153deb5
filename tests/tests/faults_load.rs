//! Load: 20 builds at once sharing one `--cache-dir`, one `--cache-repo`
//! and one work directory all succeed and every image verifies (umoci,
//! skopeo); a 2 GiB layer is pushed and pulled back with the right digest
//! while strata's peak RSS stays bounded (streaming, not buffering). The peak
//! RSS numbers are printed (docs/benchmarks.md reports them).

mod build_support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use build_support::*;
use strata_builder::image::digest::{Digest, DigestWriter};
use strata_tests::registry::Registry;
use strata_tests::{require, tools};

/// Runs strata with `a` and waits for it with wait4, returning success, its
/// log and its peak RSS in bytes (its own and its waited-for children's).
fn strata_rss(a: &[String], cwd: &Path) -> (bool, String, u64) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = Command::new(strata_tests::strata_bin())
        .args(a)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut status = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: waiting for our own child, with valid out-pointers.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, usage.as_mut_ptr()) };
    assert_eq!(r, child.id() as i32, "wait4: {}", std::io::Error::last_os_error());
    // SAFETY: wait4 succeeded, so it filled `usage`.
    let maxrss_kib = unsafe { usage.assume_init() }.ru_maxrss as u64;
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (ok, std::fs::read_to_string(log.path()).unwrap(), maxrss_kib * 1024)
}

fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

/// Free bytes on the file system holding `dir`.
fn free_space(dir: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(dir).unwrap();
    st.blocks_available() as u64 * st.fragment_size() as u64
}

#[test]
fn twenty_concurrent_builds_share_caches() {
    let t = "twenty_concurrent_builds_share_caches";
    if !requirements(t) || !require::fuse(t) || !require::tool(t, "docker-registry") {
        return;
    }
    let s = Scratch::new();
    let reg = Registry::start();
    let context = s.path().join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(context.join("hello.txt"), "hello\n").unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        "FROM base\nARG N\nRUN echo shared > /shared\nCOPY hello.txt /hello.txt\nRUN echo $N > /n\n",
    )
    .unwrap();
    let cache_dir = s.path().join("cache");
    let work = s.work();
    let builds: Vec<_> = (0..20)
        .map(|i| {
            let a = args(&[
                "--context",
                context.to_str().unwrap(),
                "--build-context",
                &s.base_context(),
                "--build-arg",
                &format!("N={i}"),
                "--cache=true",
                "--cache-dir",
                cache_dir.to_str().unwrap(),
                "--cache-repo",
                &format!("{}/cache", reg.addr),
                "--insecure-registry",
                &reg.addr,
                "--destination",
                &format!("{}/app/load-{i}:1", reg.addr),
                "--oci-layout-path",
                s.path().join(format!("out-{i}")).to_str().unwrap(),
                "--kaniko-dir",
                work.to_str().unwrap(),
            ]);
            let cwd = context.clone();
            std::thread::spawn(move || strata_rss(&a, &cwd))
        })
        .collect();
    let mut peak = 0;
    for (i, b) in builds.into_iter().enumerate() {
        let (ok, log, rss) = b.join().unwrap();
        assert!(ok, "build {i} failed:\n{log}");
        peak = peak.max(rss);
    }
    println!("20 concurrent builds: peak RSS of one strata process {} MiB", mib(peak));
    for i in 0..20 {
        let layout = s.path().join(format!("out-{i}"));
        let rootfs = unpack(&layout, "1", &s.path().join(format!("bundle-{i}")));
        assert_eq!(std::fs::read_to_string(rootfs.join("n")).unwrap(), format!("{i}\n"));
        assert_eq!(std::fs::read_to_string(rootfs.join("shared")).unwrap(), "shared\n");
        assert_eq!(std::fs::read_to_string(rootfs.join("hello.txt")).unwrap(), "hello\n");
        let remote = tools::skopeo_inspect(&format!("docker://{}/app/load-{i}:1", reg.addr), &["--tls-verify=false"]);
        assert_eq!(remote["Layers"].as_array().unwrap().len(), 4, "{remote}");
    }
    assert_work_clean(&work, "");
}

/// Writes `len` bytes of xorshift output (incompressible, fast to make) to `path`.
fn write_random(path: &Path, len: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// GETs `path` from `addr` over plain HTTP/1.0 and hashes the body as it streams in.
fn fetch_and_hash(addr: &str, path: &str) -> (Digest, u64) {
    use std::io::BufRead;
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut r = std::io::BufReader::with_capacity(1 << 20, conn);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.contains(" 200 "), "GET {path}: {status}");
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
    }
    let mut w = DigestWriter::new(std::io::sink());
    std::io::copy(&mut r, &mut w).unwrap();
    let (digest, size, _) = w.finish();
    (digest, size)
}

#[test]
fn two_gib_layer_pushes_and_pulls_back_with_bounded_memory() {
    let t = "two_gib_layer_pushes_and_pulls_back_with_bounded_memory";
    if !requirements(t) || !require::fuse(t) || !require::tool(t, "docker-registry") {
        return;
    }
    const SIZE: u64 = 2 << 30;
    let s = Scratch::new();
    // The context file, its copy in the stage root, the layer blob, the registry's copy.
    let needed = 4 * SIZE + (1 << 30);
    let free = free_space(s.path());
    if free < needed {
        require::missing(t, &format!("needs {} GiB free in {}, has {}", needed >> 30, s.path().display(), free >> 30));
        return;
    }
    let reg = Registry::start();
    let context = s.path().join("context");
    std::fs::create_dir_all(&context).unwrap();
    write_random(&context.join("big"), SIZE);
    std::fs::write(context.join("Dockerfile"), "FROM base\nCOPY big /big\n").unwrap();
    let dest = format!("{}/app/big:1", reg.addr);
    let a = args(&[
        "--context",
        context.to_str().unwrap(),
        "--build-context",
        &s.base_context(),
        "--destination",
        &dest,
        "--insecure-registry",
        &reg.addr,
        "--compression",
        "none",
        "--kaniko-dir",
        s.work().to_str().unwrap(),
    ]);
    let started = std::time::Instant::now();
    let (ok, log, rss) = strata_rss(&a, &context);
    assert!(ok, "{log}");
    println!("2 GiB layer: built and pushed in {:.0?}, peak RSS {} MiB", started.elapsed(), mib(rss));
    assert!(rss < 1 << 30, "peak RSS {} MiB for a 2 GiB layer: it is buffered, not streamed", mib(rss));

    // Pull the layer back and hash it independently.
    let manifest = tools::skopeo_inspect(&format!("docker://{dest}"), &["--tls-verify=false", "--raw"]);
    let layers = manifest["layers"].as_array().unwrap();
    let big = layers.iter().find(|l| l["size"].as_u64().unwrap() > SIZE).expect("the 2 GiB layer");
    let digest = big["digest"].as_str().unwrap();
    let (hashed, size) = fetch_and_hash(&reg.addr, &format!("/v2/app/big/blobs/{digest}"));
    assert_eq!(hashed.as_str(), digest);
    assert_eq!(size, big["size"].as_u64().unwrap());
    println!("pulled back {digest} in total {:.0?}", started.elapsed());
}
