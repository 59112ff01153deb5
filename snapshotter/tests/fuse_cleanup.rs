//! No FUSE mount is ever left behind, and a dead server never hangs a step:
//! a dropped or panicking step unmounts, a SIGKILLed server's mount answers
//! ENOTCONN and `cleanup_stale` removes it, and `probe` says in one line
//! why FUSE is unusable (here: /dev/fuse hidden in a private mount
//! namespace). Needs root and /dev/fuse; skips without them unless CI=true.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use strata_snapshotter::fuse;

mod common;
use common::{fuse_available, mounts_under};

fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::Builder::new().prefix("strata-fuse-cleanup").tempdir().unwrap();
    let (root, mnt) = (tmp.path().join("root"), tmp.path().join("mnt"));
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    std::fs::write(root.join("file"), "x").unwrap();
    (tmp, root, mnt)
}

#[test]
fn dropped_step_unmounts() {
    if !fuse_available() {
        return;
    }
    let (tmp, root, mnt) = dirs();
    let step = fuse::mount_step(&root, &mnt, &[]).unwrap();
    std::fs::write(mnt.join("new"), "y").unwrap();
    assert_eq!(mounts_under(tmp.path()).len(), 1);
    drop(step);
    assert!(mounts_under(tmp.path()).is_empty());
    assert!(root.join("new").exists());
}

#[test]
fn panic_during_step_unmounts() {
    if !fuse_available() {
        return;
    }
    let (tmp, root, mnt) = dirs();
    let result = std::panic::catch_unwind(|| {
        let _step = fuse::mount_step(&root, &mnt, &[]).unwrap();
        std::fs::write(mnt.join("new"), "y").unwrap();
        panic!("builder bug in the middle of a step");
    });
    assert!(result.is_err());
    assert!(mounts_under(tmp.path()).is_empty(), "{:?}", mounts_under(tmp.path()));
}

#[test]
fn busy_mount_is_detached_on_finish() {
    if !fuse_available() {
        return;
    }
    let (tmp, root, mnt) = dirs();
    let step = fuse::mount_step(&root, &mnt, &[]).unwrap();
    // A process left holding a file open (a daemon a RUN step forgot).
    let held = std::fs::File::open(mnt.join("file")).unwrap();
    let set = step.finish().unwrap();
    assert!(set.is_empty());
    assert!(mounts_under(tmp.path()).is_empty());
    drop(held);
    // The server's descriptors (inode handles, the open file) are all gone too.
    assert_eq!(fds_into(tmp.path()), Vec::<PathBuf>::new());
}

/// This process's descriptors that refer to something under `dir`.
fn fds_into(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .collect()
}

#[test]
fn mount_on_a_missing_directory_says_why() {
    if !fuse_available() {
        return;
    }
    let (_tmp, root, mnt) = dirs();
    let err = fuse::mount_step(&root, &mnt.join("nope"), &[]).err().expect("must fail");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// Child side of `killed_server_*`: holds a mount until killed.
#[test]
fn child_holds_mount() {
    let Ok(base) = std::env::var("STRATA_FUSE_HOLD") else { return };
    let base = PathBuf::from(base);
    let _step = fuse::mount_step(&base.join("root"), &base.join("mnt"), &[]).unwrap();
    println!("mounted");
    std::thread::sleep(std::time::Duration::from_secs(120));
}

/// Runs `child_holds_mount` in a new process on `base`; returns once it has mounted.
fn spawn_holder(base: &Path) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_holds_mount", "--exact", "--nocapture", "--test-threads=1"])
        .env("STRATA_FUSE_HOLD", base)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap().contains("mounted")), "child never mounted");
    child
}

#[test]
fn killed_server_gives_enotconn_and_cleanup_stale_removes_it() {
    if !fuse_available() {
        return;
    }
    let (tmp, _root, mnt) = dirs();
    let mut child = spawn_holder(tmp.path());
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();

    // The server is gone with its process: the mount fails fast, never hangs.
    let err = std::fs::metadata(mnt.join("file")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    assert_eq!(mounts_under(tmp.path()).len(), 1);

    assert_eq!(fuse::cleanup_stale(tmp.path()).unwrap(), 1);
    assert!(mounts_under(tmp.path()).is_empty());
    assert_eq!(fuse::cleanup_stale(tmp.path()).unwrap(), 0);

    // What every build does at start: a live mount (another build's) is left
    // alone, an abandoned one is removed wherever it is.
    std::fs::create_dir_all(&mnt).unwrap();
    let mut child = spawn_holder(tmp.path());
    fuse::cleanup_abandoned().unwrap();
    assert_eq!(mounts_under(tmp.path()).len(), 1, "a live mount must be left alone");
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    assert!(fuse::cleanup_abandoned().unwrap() >= 1);
    assert!(mounts_under(tmp.path()).is_empty());
}

/// Child side of `probe_without_dev_fuse_*`: prints what probe says.
#[test]
fn child_probe() {
    if std::env::var("STRATA_FUSE_PROBE_CHILD").is_err() {
        return;
    }
    match fuse::probe() {
        Ok(()) => println!("probe: ok"),
        Err(e) => println!("probe: {e}"),
    }
}

#[test]
fn probe_without_dev_fuse_says_why_in_one_line() {
    if !fuse_available() {
        return;
    }
    // A private mount namespace where /dev is an empty tmpfs.
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs none /dev && exec "$0" child_probe --exact --nocapture --test-threads=1"#)
        .arg(&exe)
        .env("STRATA_FUSE_PROBE_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("probe: /dev/fuse missing"), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
}
