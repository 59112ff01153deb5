//! The FUSE journal against a reference full scan: for each mutating
//! operation and for the sequences that trip journals up, the ChangeSet that
//! `StepMount::finish` returns must equal the one computed by walking the
//! root before and after the step (the oracle below, kept in this test on
//! purpose: it is the definition in `changeset.rs`, written as plainly as
//! possible). Needs root and /dev/fuse; skips without them unless CI=true.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use strata_snapshotter::changeset::ChangeSet;
use strata_snapshotter::fuse;

mod common;
use common::{fuse_available, mounts_under};

// ---------------------------------------------------------------- oracle

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    rdev: u64,
    target: Option<PathBuf>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    content: u64,
}

fn is_dir(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFDIR
}

fn scan(root: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(root.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let path = rel.join(entry.file_name());
            let abs = root.join(&path);
            let md = fs::symlink_metadata(&abs).unwrap();
            let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = xattr::list(&abs)
                .map(|names| {
                    names
                        .map(|n| (n.as_bytes().to_vec(), xattr::get(&abs, &n).unwrap().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            xattrs.sort();
            let content = if md.file_type().is_file() {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                fs::read(&abs).unwrap().hash(&mut h);
                h.finish()
            } else {
                0
            };
            out.insert(
                path.clone(),
                Seen {
                    mode: md.mode(),
                    uid: md.uid(),
                    gid: md.gid(),
                    size: md.size(),
                    mtime: (md.mtime(), md.mtime_nsec()),
                    rdev: md.rdev(),
                    target: md.file_type().is_symlink().then(|| fs::read_link(&abs).unwrap()),
                    xattrs,
                    content,
                },
            );
            if md.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

fn differs(a: &Seen, b: &Seen) -> bool {
    if a.mode & libc::S_IFMT != b.mode & libc::S_IFMT {
        return true;
    }
    let sized = !is_dir(b.mode);
    a.mode != b.mode
        || a.uid != b.uid
        || a.gid != b.gid
        || a.mtime != b.mtime
        || a.rdev != b.rdev
        || (sized && a.size != b.size)
        || a.target != b.target
        || a.xattrs != b.xattrs
        || a.content != b.content
}

/// The canonical ChangeSet between two scans, as `changeset.rs` defines it.
fn oracle(before: &BTreeMap<PathBuf, Seen>, after: &BTreeMap<PathBuf, Seen>, excluded: &[&str]) -> ChangeSet {
    let excluded = |p: &Path| excluded.iter().any(|e| p.starts_with(e));
    let mut set = ChangeSet::default();
    for (path, now) in after {
        if excluded(path) {
            continue;
        }
        match before.get(path) {
            None => {
                set.changed.insert(path.clone());
            }
            Some(old) => {
                if differs(old, now) {
                    set.changed.insert(path.clone());
                }
                if is_dir(now.mode) && !is_dir(old.mode) {
                    set.opaque.insert(path.clone());
                }
            }
        }
    }
    for path in before.keys() {
        if excluded(path) || after.contains_key(path) {
            continue;
        }
        let hidden = path
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
            .any(|a| !after.get(a).is_some_and(|s| is_dir(s.mode)));
        if !hidden {
            set.deleted.insert(path.clone());
        }
    }
    set
}

// ---------------------------------------------------------------- harness

struct Dirs {
    tmp: tempfile::TempDir,
}

impl Dirs {
    fn new() -> Dirs {
        let tmp = tempfile::Builder::new().prefix("strata-fuse-test").tempdir().unwrap();
        fs::create_dir(tmp.path().join("root")).unwrap();
        fs::create_dir(tmp.path().join("mnt")).unwrap();
        Dirs { tmp }
    }
    fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }
    fn mnt(&self) -> PathBuf {
        self.tmp.path().join("mnt")
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let left = mounts_under(self.tmp.path());
        if !left.is_empty() {
            let _ = fuse::cleanup_stale(self.tmp.path());
            if !std::thread::panicking() {
                panic!("mounts left behind: {left:?}");
            }
        }
    }
}

/// Runs `step` against the mount of a root prepared by `setup`, and checks
/// the journal's ChangeSet against the oracle. Returns it for extra checks.
fn check_with(
    opts: &fuse::Options,
    excluded: &[&str],
    setup: &dyn Fn(&Path),
    step: &dyn Fn(&Path),
) -> Option<ChangeSet> {
    if !fuse_available() {
        return None;
    }
    let dirs = Dirs::new();
    setup(&dirs.root());
    // Timestamps are coarse: make the step's ones differ from setup's.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let before = scan(&dirs.root());
    let excl: Vec<PathBuf> = excluded.iter().map(PathBuf::from).collect();
    let mount = fuse::mount_step_with(&dirs.root(), &dirs.mnt(), &excl, opts).expect("mount");
    step(&dirs.mnt());
    let got = mount.finish().expect("finish");
    let after = scan(&dirs.root());
    let want = oracle(&before, &after, excluded);
    assert_eq!(got, want, "journal (left) differs from a full scan (right)");
    Some(got)
}

fn check(setup: impl Fn(&Path), step: impl Fn(&Path)) -> Option<ChangeSet> {
    // Both server configurations: kernel passthrough where this process may
    // use it (root in the initial user namespace), and the cached path that
    // pods without it get.
    let got = check_with(&fuse::Options::default(), &[], &setup, &step)?;
    let cached = fuse::Options { passthrough: false, ..Default::default() };
    check_with(&cached, &[], &setup, &step)?;
    Some(got)
}

fn set(paths: &[&str]) -> BTreeSet<PathBuf> {
    paths.iter().map(PathBuf::from).collect()
}

fn base(root: &Path) {
    fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("var/lib/app/data")).unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0\n").unwrap();
    fs::write(root.join("etc/conf.d/a.conf"), "a=1\n").unwrap();
    fs::write(root.join("usr/bin/tool"), vec![7u8; 10000]).unwrap();
    fs::write(root.join("var/lib/app/data/one"), "1").unwrap();
    fs::write(root.join("var/lib/app/data/two"), "2").unwrap();
    symlink("../usr/bin/tool", root.join("etc/tool-link")).unwrap();
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    let (a, b) = (cpath(from), cpath(to));
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), flags) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

// ---------------------------------------------------------------- single operations

#[test]
fn create_and_write_new_files() {
    let Some(got) = check(base, |m| {
        fs::write(m.join("etc/new.conf"), "hello").unwrap();
        fs::write(m.join("new-at-top"), "x").unwrap();
    }) else { return };
    assert!(got.changed.is_superset(&set(&["etc", "etc/new.conf", "new-at-top"])), "{got:?}");
}

#[test]
fn write_existing_file() {
    check(base, |m| {
        let mut f = fs::OpenOptions::new().append(true).open(m.join("etc/passwd")).unwrap();
        f.write_all(b"daemon:x:1:1\n").unwrap();
    });
}

#[test]
fn overwrite_in_place_same_size() {
    check(base, |m| {
        let mut f = fs::OpenOptions::new().write(true).open(m.join("usr/bin/tool")).unwrap();
        f.seek(SeekFrom::Start(100)).unwrap();
        f.write_all(&[9u8; 50]).unwrap();
    });
}

#[test]
fn mkdir_with_contents_brings_descendants() {
    check(base, |m| {
        fs::create_dir_all(m.join("opt/app/lib")).unwrap();
        fs::write(m.join("opt/app/lib/x.so"), "elf").unwrap();
        fs::write(m.join("opt/app/run"), "#!/bin/sh").unwrap();
    });
}

#[test]
fn mknod_fifo() {
    check(base, |m| {
        let p = cpath(&m.join("etc/fifo"));
        assert_eq!(unsafe { libc::mknod(p.as_ptr(), libc::S_IFIFO | 0o644, 0) }, 0);
    });
}

#[test]
fn setattr_chmod_chown_truncate_utimens() {
    check(base, |m| {
        fs::set_permissions(m.join("etc/passwd"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::lchown(m.join("etc/conf.d/a.conf"), Some(1000), Some(1000)).unwrap();
        fs::OpenOptions::new().write(true).open(m.join("usr/bin/tool")).unwrap().set_len(10).unwrap();
        let f = fs::File::open(m.join("var/lib/app/data/one")).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000)).unwrap();
        std::os::unix::fs::lchown(m.join("etc/tool-link"), Some(5), Some(5)).unwrap();
    });
}

#[test]
fn unlink_and_rmdir() {
    let Some(got) = check(base, |m| {
        fs::remove_file(m.join("etc/passwd")).unwrap();
        fs::remove_dir_all(m.join("var/lib/app")).unwrap();
    }) else { return };
    assert_eq!(got.deleted, set(&["etc/passwd", "var/lib/app"]));
}

#[test]
fn rename_file() {
    check(base, |m| fs::rename(m.join("etc/passwd"), m.join("usr/passwd")).unwrap());
}

#[test]
fn rename_directory_moves_its_subtree() {
    let Some(got) = check(base, |m| fs::rename(m.join("var/lib/app"), m.join("opt-app")).unwrap()) else { return };
    assert!(got.changed.contains(Path::new("opt-app/data/one")), "{got:?}");
    assert!(got.deleted.contains(Path::new("var/lib/app")), "{got:?}");
}

#[test]
fn rename_noreplace_and_exchange() {
    check(base, |m| {
        let err = renameat2(&m.join("etc/passwd"), &m.join("etc/conf.d/a.conf"), libc::RENAME_NOREPLACE).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
        renameat2(&m.join("etc/passwd"), &m.join("etc/passwd2"), libc::RENAME_NOREPLACE).unwrap();
        renameat2(&m.join("etc/conf.d"), &m.join("var/lib/app"), libc::RENAME_EXCHANGE).unwrap();
        renameat2(&m.join("etc/passwd2"), &m.join("usr/bin/tool"), libc::RENAME_EXCHANGE).unwrap();
    });
}

#[test]
fn symlink_and_hard_link() {
    check(base, |m| {
        symlink("/nowhere", m.join("usr/dangling")).unwrap();
        fs::hard_link(m.join("usr/bin/tool"), m.join("usr/bin/tool2")).unwrap();
    });
}

#[test]
fn xattrs_set_and_removed() {
    check(
        |r| {
            base(r);
            xattr::set(r.join("etc/conf.d/a.conf"), "user.old", b"1").unwrap();
        },
        |m| {
            xattr::set(m.join("etc/passwd"), "user.new", b"v").unwrap();
            xattr::remove(m.join("etc/conf.d/a.conf"), "user.old").unwrap();
            xattr::set(m.join("usr/bin"), "user.dir", b"d").unwrap();
        },
    );
}

#[test]
fn fallocate_and_copy_file_range() {
    check(base, |m| {
        let f = fs::OpenOptions::new().read(true).write(true).open(m.join("etc/passwd")).unwrap();
        assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 16) }, 0);
        let src = fs::File::open(m.join("usr/bin/tool")).unwrap();
        let dst = fs::OpenOptions::new().write(true).open(m.join("var/lib/app/data/one")).unwrap();
        let mut off_in: libc::loff_t = 0;
        let mut off_out: libc::loff_t = 0;
        let n = unsafe {
            libc::copy_file_range(src.as_raw_fd(), &mut off_in, dst.as_raw_fd(), &mut off_out, 5000, 0)
        };
        assert_eq!(n, 5000);
    });
}

#[test]
fn shared_mmap_write() {
    check(base, |m| {
        let f = fs::OpenOptions::new().read(true).write(true).open(m.join("usr/bin/tool")).unwrap();
        let mut map = unsafe { memmap2::MmapMut::map_mut(&f).unwrap() };
        map[5000..5010].copy_from_slice(b"0123456789");
        drop(map);
    });
}

#[test]
fn shared_mmap_write_without_msync_or_close_order() {
    // The mapping outlives the descriptor: pages reach the file only on writeback.
    check(base, |m| {
        let f = fs::OpenOptions::new().read(true).write(true).open(m.join("var/lib/app/data/two")).unwrap();
        f.set_len(4096).unwrap();
        let mut map = unsafe { memmap2::MmapMut::map_mut(&f).unwrap() };
        drop(f);
        map[0..4].copy_from_slice(b"mmap");
        drop(map);
    });
}

// ---------------------------------------------------------------- sequences

#[test]
fn create_then_delete_leaves_only_the_parent() {
    let Some(got) = check(base, |m| {
        fs::write(m.join("etc/tmp"), "x").unwrap();
        fs::remove_file(m.join("etc/tmp")).unwrap();
        fs::create_dir_all(m.join("scratch/deep")).unwrap();
        fs::remove_dir_all(m.join("scratch")).unwrap();
    }) else { return };
    assert!(got.deleted.is_empty(), "{got:?}");
    assert!(!got.changed.iter().any(|p| p.ends_with("tmp") || p.starts_with("scratch")), "{got:?}");
}

#[test]
fn open_then_unlinked_file() {
    check(base, |m| {
        let mut f = fs::OpenOptions::new().read(true).write(true).open(m.join("var/lib/app/data/one")).unwrap();
        fs::remove_file(m.join("var/lib/app/data/one")).unwrap();
        f.write_all(b"written after unlink").unwrap();
        let mut s = String::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut s).unwrap();
        let mut g = fs::File::create(m.join("tmpfile")).unwrap();
        fs::remove_file(m.join("tmpfile")).unwrap();
        g.write_all(b"gone").unwrap();
    });
}

#[test]
fn rename_chains() {
    check(base, |m| {
        fs::rename(m.join("etc/passwd"), m.join("etc/p1")).unwrap();
        fs::rename(m.join("etc/p1"), m.join("usr/p2")).unwrap();
        fs::rename(m.join("usr/p2"), m.join("var/p3")).unwrap();
        // There and back again: only the parents' mtimes change.
        fs::rename(m.join("var/lib/app"), m.join("app2")).unwrap();
        fs::rename(m.join("app2"), m.join("var/lib/app")).unwrap();
        // A file renamed over another.
        fs::rename(m.join("etc/conf.d/a.conf"), m.join("var/lib/app/data/one")).unwrap();
    });
}

#[test]
fn write_through_one_hard_link_changes_every_name() {
    let Some(got) = check(
        |r| {
            base(r);
            fs::hard_link(r.join("usr/bin/tool"), r.join("etc/tool-hard")).unwrap();
            fs::hard_link(r.join("usr/bin/tool"), r.join("var/lib/tool-hard")).unwrap();
        },
        |m| {
            let mut f = fs::OpenOptions::new().append(true).open(m.join("usr/bin/tool")).unwrap();
            f.write_all(b"more").unwrap();
        },
    ) else { return };
    assert!(got.changed.is_superset(&set(&["usr/bin/tool", "etc/tool-hard", "var/lib/tool-hard"])), "{got:?}");
}

#[test]
fn chmod_of_a_hard_linked_file() {
    check(
        |r| {
            base(r);
            fs::hard_link(r.join("etc/passwd"), r.join("usr/passwd-link")).unwrap();
        },
        |m| fs::set_permissions(m.join("usr/passwd-link"), fs::Permissions::from_mode(0o400)).unwrap(),
    );
}

#[test]
fn directory_replaced_by_a_file() {
    let Some(got) = check(base, |m| {
        fs::remove_dir_all(m.join("var/lib/app")).unwrap();
        fs::write(m.join("var/lib/app"), "now a file").unwrap();
    }) else { return };
    assert!(got.changed.contains(Path::new("var/lib/app")));
    assert!(got.deleted.is_empty(), "{got:?}");
}

#[test]
fn file_replaced_by_a_directory_is_opaque() {
    let Some(got) = check(base, |m| {
        fs::remove_file(m.join("etc/passwd")).unwrap();
        fs::create_dir(m.join("etc/passwd")).unwrap();
        fs::write(m.join("etc/passwd/inside"), "x").unwrap();
    }) else { return };
    assert_eq!(got.opaque, set(&["etc/passwd"]));
}

#[test]
fn directory_recreated_keeps_whiteouts_for_what_is_gone() {
    check(base, |m| {
        fs::remove_dir_all(m.join("var/lib/app/data")).unwrap();
        fs::create_dir(m.join("var/lib/app/data")).unwrap();
        fs::write(m.join("var/lib/app/data/two"), "new two").unwrap();
    });
}

#[test]
fn untouched_reads_change_nothing() {
    let Some(got) = check(base, |m| {
        fs::read(m.join("usr/bin/tool")).unwrap();
        for e in fs::read_dir(m.join("etc")).unwrap() {
            fs::symlink_metadata(e.unwrap().path()).unwrap();
        }
        fs::read_link(m.join("etc/tool-link")).unwrap();
        // Opened for writing, never written.
        drop(fs::OpenOptions::new().write(true).open(m.join("etc/passwd")).unwrap());
    }) else { return };
    assert!(got.is_empty(), "{got:?}");
}

#[test]
fn excluded_paths_never_appear() {
    let opts = fuse::Options::default();
    let Some(got) = check_with(
        &opts,
        &["proc", "tmp/build"],
        &|r: &Path| {
            base(r);
            fs::create_dir_all(r.join("proc")).unwrap();
            fs::create_dir_all(r.join("tmp/build")).unwrap();
        },
        &|m: &Path| {
            fs::write(m.join("proc/x"), "x").unwrap();
            fs::write(m.join("tmp/build/y"), "y").unwrap();
            fs::write(m.join("tmp/z"), "z").unwrap();
        },
    ) else { return };
    assert!(got.changed.contains(Path::new("tmp/z")));
    assert!(!got.changed.iter().any(|p| p.starts_with("proc") || p.starts_with("tmp/build")), "{got:?}");
}

// ---------------------------------------------------------------- real RUN-like steps

fn busybox_root(r: &Path) {
    base(r);
    fs::create_dir_all(r.join("bin")).unwrap();
    fs::copy("/usr/bin/busybox", r.join("bin/busybox")).unwrap();
    fs::create_dir_all(r.join("tmp")).unwrap();
    fs::set_permissions(r.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
}

/// Runs a busybox shell chrooted into the mount, as RUN does, as `uid`.
fn chrooted_sh(mnt: &Path, uid: u32, script: &str) {
    use std::os::unix::process::CommandExt as _;
    let root = cpath(mnt);
    let mut cmd = std::process::Command::new("/bin/busybox");
    cmd.args(["sh", "-c", script]).env_clear().env("PATH", "/bin");
    unsafe {
        cmd.pre_exec(move || {
            if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if uid != 0 && (libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(uid) != 0 || libc::setuid(uid) != 0) {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn static_busybox_runs_chrooted_in_the_mount() {
    if !Path::new("/usr/bin/busybox").exists() {
        eprintln!("skipping: no /usr/bin/busybox");
        return;
    }
    check(busybox_root, |m| {
        chrooted_sh(
            m,
            0,
            "echo hi > /etc/motd && mkdir -p /opt/x && cp /etc/passwd /opt/x/ && rm /etc/conf.d/a.conf \
             && ln -s /opt/x /opt/link && mv /var/lib/app /var/lib/app2 && chmod 700 /usr/bin/tool",
        );
    });
}

#[test]
fn user_steps_create_files_they_own() {
    if !Path::new("/usr/bin/busybox").exists() {
        eprintln!("skipping: no /usr/bin/busybox");
        return;
    }
    check(busybox_root, |m| {
        chrooted_sh(m, 1000, "echo mine > /tmp/userfile && mkdir /tmp/userdir && ln -s userfile /tmp/userlink");
        let md = fs::symlink_metadata(m.join("tmp/userdir")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1000, 1000));
        assert_eq!(fs::symlink_metadata(m.join("tmp/userlink")).unwrap().uid(), 1000);
    });
}

// ---------------------------------------------------------------- descriptor budget

/// Child side of `inodes_past_the_descriptor_budget`: with a tiny descriptor
/// limit most nodes hold no handle and are reached from their parent.
#[test]
fn child_small_fd_budget() {
    if std::env::var("STRATA_FUSE_SMALL_FD").is_err() {
        return;
    }
    let lim = libc::rlimit { rlim_cur: 600, rlim_max: 600 };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let many = |r: &Path| {
        base(r);
        for i in 0..400 {
            fs::write(r.join(format!("usr/bin/f{i}")), format!("{i}")).unwrap();
        }
        fs::hard_link(r.join("usr/bin/f7"), r.join("etc/f7-link")).unwrap();
    };
    check(many, |m| {
        // Look everything up first, so later nodes exceed the budget.
        let names: Vec<_> = fs::read_dir(m.join("usr/bin")).unwrap().map(|e| e.unwrap().path()).collect();
        for p in &names {
            fs::symlink_metadata(p).unwrap();
        }
        let mut f = fs::OpenOptions::new().append(true).open(m.join("usr/bin/f399")).unwrap();
        f.write_all(b"more").unwrap();
        fs::set_permissions(m.join("usr/bin/f398"), fs::Permissions::from_mode(0o700)).unwrap();
        xattr::set(m.join("usr/bin/f397"), "user.k", b"v").unwrap();
        fs::rename(m.join("usr/bin/f396"), m.join("etc/f396")).unwrap();
        let mut g = fs::OpenOptions::new().append(true).open(m.join("usr/bin/f7")).unwrap();
        fs::remove_file(m.join("usr/bin/f395")).unwrap();
        g.write_all(b"via a hard link").unwrap();
        assert_eq!(fs::read_to_string(m.join("usr/bin/f1")).unwrap(), "1");
    });
    println!("child ok");
}

#[test]
fn inodes_past_the_descriptor_budget() {
    if !fuse_available() {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["child_small_fd_budget", "--exact", "--nocapture", "--test-threads=1"])
        .env("STRATA_FUSE_SMALL_FD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("child ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
