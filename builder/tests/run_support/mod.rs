//! Shared pieces of the RUN integration tests: a real busybox root made from
//! Debian's busybox-static, requests with captured output, and checks that
//! nothing is left behind (mounts, files, processes).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use strata_builder::exec::run::{Isolation, RunRequest};

/// Whether the test can run: root is needed. Skips with a message, except
/// in CI (`CI=true`) where a skip is a failure.
pub fn have_root(test: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1")) {
        panic!("{test}: needs root, and CI=true forbids skipping");
    }
    eprintln!("SKIP {test}: needs root");
    false
}

/// A temporary build area: `root` is a busybox image root, `work` a scratch
/// directory (context, caches) beside it.
pub struct TestRoot {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub work: PathBuf,
}

/// A root with /bin/busybox and its applets, /etc/passwd and /etc/group.
pub fn busybox_root() -> TestRoot {
    let dir = tempfile::Builder::new()
        .prefix("strata-run-test-")
        .tempdir()
        .unwrap();
    let root = dir.path().join("rootfs");
    let work = dir.path().join("work");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("Debian's busybox-static at /bin/busybox");
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1000:\nstaff:x:50:app\nnogroup:x:65534:\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    TestRoot { dir, root, work }
}

pub type Captured = Arc<Mutex<Vec<u8>>>;

/// A request running `script` with /bin/sh -c, output captured.
pub fn request(t: &TestRoot, script: &str, isolation: Isolation) -> (RunRequest, Captured) {
    let mut req = RunRequest::new(
        &t.root,
        vec!["/bin/sh".into(), "-c".into(), script.into()],
        "[1/1] RUN",
        isolation,
    );
    req.cache_root = t.work.join("cache");
    req.env = vec![("PATH".into(), "/bin".into())];
    let out: Captured = Arc::new(Mutex::new(Vec::new()));
    req.output = Some(out.clone());
    (req, out)
}

pub fn text(c: &Captured) -> String {
    String::from_utf8_lossy(&c.lock().unwrap()).into_owned()
}

/// The lines of output without the step prefix.
pub fn lines(c: &Captured) -> Vec<String> {
    text(c)
        .lines()
        .map(|l| l.strip_prefix("[1/1] RUN ").unwrap_or(l).to_string())
        .collect()
}

/// Every path under `root` (relative), with its type and mode.
pub fn tree(root: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            use std::os::unix::fs::MetadataExt;
            out.insert(format!(
                "{} {:o}",
                p.strip_prefix(base).unwrap().display(),
                meta.mode()
            ));
            if meta.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// Every path under `root` with its mode and mtime (ns): what a metadata
/// scan (`--snapshot-mode=redo`) compares.
pub fn metadata(root: &Path) -> BTreeSet<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeSet::new();
    out.insert(format!(
        ". {}",
        std::fs::symlink_metadata(root)
            .map(|m| m.mtime_nsec() + m.mtime() * 1_000_000_000)
            .unwrap()
    ));
    for entry in tree(root) {
        let rel = entry.rsplit_once(' ').unwrap().0;
        let m = std::fs::symlink_metadata(root.join(rel)).unwrap();
        out.insert(format!(
            "{entry} {}",
            m.mtime() * 1_000_000_000 + m.mtime_nsec()
        ));
    }
    out
}

/// Checks that nothing is mounted under `dir` in strata's mount namespace
/// (the machine is shared: other mounts may come and go meanwhile).
pub fn assert_no_mounts_under(dir: &Path) {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_str().unwrap();
    let leaked: Vec<&str> = table.lines().filter(|l| l.contains(dir)).collect();
    assert!(leaked.is_empty(), "mounts leaked: {leaked:?}");
}

/// How many processes run exactly `cmdline` (arguments joined by spaces).
pub fn processes(cmdline: &str) -> usize {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    rd.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|raw| {
            let args: Vec<String> = raw
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.join(" ") == cmdline
        })
        .count()
}

/// Installs a seccomp filter that denies new user namespaces to this process
/// and its children, as Docker's default profile does for a container without
/// CAP_SYS_ADMIN (clone3 reports ENOSYS so callers fall back to clone, whose
/// flags are checked). `tsync` applies it to every thread. Only raw system
/// calls on stack data, so it may run between fork and exec; false on failure.
pub fn seccomp_deny_user_namespaces(tsync: bool) -> bool {
    #[repr(C)]
    struct SockFilter {
        code: u16,
        jt: u8,
        jf: u8,
        k: u32,
    }
    #[repr(C)]
    struct SockFprog {
        len: u16,
        filter: *const SockFilter,
    }
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JSET_K: u16 = 0x45;
    const RET_K: u16 = 0x06;
    const ALLOW: u32 = 0x7fff_0000;
    const ERRNO: u32 = 0x0005_0000;
    let f = |code, jt, jf, k| SockFilter { code, jt, jf, k };
    let prog = [
        f(LD_W_ABS, 0, 0, 0),
        f(JEQ_K, 0, 1, libc::SYS_clone3 as u32),
        f(RET_K, 0, 0, ERRNO | libc::ENOSYS as u32),
        f(JEQ_K, 1, 0, libc::SYS_unshare as u32),
        f(JEQ_K, 0, 3, libc::SYS_clone as u32),
        f(LD_W_ABS, 0, 0, 16), // args[0], low 32 bits
        f(JSET_K, 0, 1, libc::CLONE_NEWUSER as u32),
        f(RET_K, 0, 0, ERRNO | libc::EPERM as u32),
        f(RET_K, 0, 0, ALLOW),
    ];
    let fprog = SockFprog {
        len: prog.len() as u16,
        filter: prog.as_ptr(),
    };
    // SAFETY: prctl and seccomp on a filter that lives for the whole call.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::syscall(
                libc::SYS_seccomp,
                1, /* SET_MODE_FILTER */
                tsync as libc::c_ulong,
                &fprog as *const SockFprog,
            ) == 0
    }
}
