//! The last RUN isolation level end to end: strata builds in the container's
//! own root, as kaniko does, in a simulated kaniko pod. The "pod" is a
//! throwaway root directory (the strata binary bind-mounted at
//! /kaniko/strata, its shared libraries found with `ldd`, the build context
//! at /workspace, an output volume at /out, the base image layout at /base, a
//! bind-mounted /etc/resolv.conf, /proc and /dev) that strata's process
//! pivots into in a new mount namespace, without CAP_SYS_CHROOT and
//! CAP_SYS_ADMIN and with user namespaces denied. Outside, the built image is
//! checked with umoci and skopeo, and the pod's root is seen replaced by the
//! image while its mounts, the work directory and the host are left alone.

mod run_support;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_tests::{fixtures, require, strata_bin, tools};

/// Docker's default capabilities (numbers from linux/capability.h) without
/// CAP_SYS_CHROOT (18): CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID,
/// SETUID, SETPCAP, NET_BIND_SERVICE, NET_RAW, MKNOD, AUDIT_WRITE, SETFCAP.
const POD_CAPS: [libc::c_int; 13] = [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 27, 29, 31];

const DOCKERFILE: &str = "\
FROM base AS builder
RUN mkdir -p /src && echo compiled > /src/out.bin && rm /bin/vi
COPY app.txt /src/app.txt

FROM builder AS tested
RUN test -e /src/app.txt && test ! -e /bin/vi && echo tested > /src/tested

FROM base
COPY --from=builder /src/ /opt/app/
COPY --from=tested /src/tested /opt/tested
RUN echo made > /made-by-run && rm /etc/group && cat /etc/resolv.conf > /resolv-seen \\
 && test ! -e /src && test -e /bin/vi && ls /opt/app > /opt/listing
ENV GREETING=hello
CMD [\"/bin/sh\"]
";

/// A bind mount (or a filesystem when `fstype` is set) made in the pod.
struct Mount {
    source: CString,
    target: CString,
    fstype: Option<CString>,
    flags: libc::c_ulong,
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// The pod's root: directories, the strata binary's shared libraries at the
/// paths `ldd` names, and a few files of the container's own.
fn make_pod_root(pod: &Path) {
    for dir in [
        "proc",
        "sys",
        "dev",
        "kaniko",
        "workspace",
        "out",
        "base",
        "etc",
        "tmp",
        "usr/share/pod",
    ] {
        std::fs::create_dir_all(pod.join(dir)).unwrap();
    }
    std::fs::set_permissions(pod.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(pod.join("kaniko/strata"), "").unwrap();
    std::fs::write(pod.join("etc/resolv.conf"), "").unwrap();
    std::fs::write(pod.join("etc/pod-marker"), "the container's own file\n").unwrap();
    std::fs::write(pod.join("usr/share/pod/data"), "the container's own data\n").unwrap();
    // A static binary has none (ldd then fails, saying so).
    let ldd = Command::new("ldd")
        .arg(strata_bin())
        .output()
        .expect("running ldd");
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let to = pod.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap_or_else(|e| panic!("copying {lib}: {e}"));
    }
}

/// In the forked child, before exec: a private mount namespace, the mounts,
/// pivot_root into the pod, the plain pod's capabilities and seccomp policy.
/// Only raw system calls on data prepared before the fork.
fn enter_pod(pod: &CString, mounts: &[Mount]) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let dot = c".".as_ptr();
    // SAFETY: system calls on valid NUL-terminated strings.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        let none = std::ptr::null();
        check(libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            pod.as_ptr(),
            pod.as_ptr(),
            none,
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ))?;
        for m in mounts {
            let fstype = m.fstype.as_ref().map_or(none, |f| f.as_ptr());
            check(libc::mount(
                m.source.as_ptr(),
                m.target.as_ptr(),
                fstype,
                m.flags,
                std::ptr::null(),
            ))?;
        }
        check(libc::chdir(pod.as_ptr()))?;
        check(libc::syscall(libc::SYS_pivot_root, dot, dot) as libc::c_int)?;
        check(libc::umount2(dot, libc::MNT_DETACH))?;
        check(libc::chdir(c"/".as_ptr()))?;
        for cap in 0..64 {
            if !POD_CAPS.contains(&cap) && libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                // Past the kernel's last capability.
                break;
            }
        }
    }
    if !run_support::seccomp_deny_user_namespaces(false) {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A throwaway pod around one build.
struct Pod {
    dir: tempfile::TempDir,
    /// /kaniko is a volume of its own (an emptyDir), not part of the root.
    kaniko_volume: bool,
}

impl Pod {
    fn new(kaniko_volume: bool) -> Pod {
        let dir = tempfile::Builder::new()
            .prefix("strata-pod-test-")
            .tempdir()
            .unwrap();
        let p = dir.path();
        make_pod_root(&p.join("root"));
        for d in ["context", "out"] {
            std::fs::create_dir_all(p.join(d)).unwrap();
        }
        fixtures::busybox_layout(&p.join("base"));
        std::fs::write(
            p.join("resolv.conf"),
            "nameserver 192.0.2.53\n# the pod's resolv.conf\n",
        )
        .unwrap();
        std::fs::write(p.join("out/keep-me"), "a file on the output volume\n").unwrap();
        std::fs::write(p.join("host-sentinel"), "outside the pod\n").unwrap();
        std::fs::create_dir_all(p.join("kaniko-volume")).unwrap();
        std::fs::write(p.join("kaniko-volume/strata"), "").unwrap();
        Pod { dir, kaniko_volume }
    }

    /// Names in the pod's /kaniko.
    fn work_dir(&self) -> Vec<String> {
        let dir = if self.kaniko_volume {
            "kaniko-volume"
        } else {
            "root/kaniko"
        };
        std::fs::read_dir(self.path(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Runs strata with `args` in the pod; returns its exit success and log.
    fn strata(&self, args: &[&str]) -> (bool, String) {
        let root = self.path("root");
        let bind = |from: PathBuf, to: &str, extra: libc::c_ulong| Mount {
            source: cstr(&from),
            target: cstr(&root.join(to)),
            fstype: None,
            flags: libc::MS_BIND | extra,
        };
        let mut mounts = Vec::new();
        if self.kaniko_volume {
            mounts.push(bind(self.path("kaniko-volume"), "kaniko", 0));
        }
        mounts.extend([
            bind(strata_bin(), "kaniko/strata", 0),
            bind(self.path("context"), "workspace", 0),
            bind(self.path("out"), "out", 0),
            bind(self.path("base"), "base", 0),
            bind(self.path("resolv.conf"), "etc/resolv.conf", 0),
            bind(PathBuf::from("/dev"), "dev", libc::MS_REC),
            Mount {
                source: c"proc".into(),
                target: cstr(&root.join("proc")),
                fstype: Some(c"proc".into()),
                flags: 0,
            },
        ]);
        let pod = cstr(&root);
        let mut cmd = Command::new("/kaniko/strata");
        cmd.args(args)
            .env_clear()
            .env("PATH", "/kaniko")
            .env("NO_COLOR", "1");
        // SAFETY: enter_pod makes only raw system calls on prepared data.
        unsafe {
            cmd.pre_exec(move || enter_pod(&pod, &mounts));
        }
        let out = cmd.output().expect("starting strata in the pod");
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), log)
    }
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn builds_in_the_container_root_of_a_plain_pod() {
    let test = "builds_in_the_container_root_of_a_plain_pod";
    if !(require::root(test)
        && require::tool(test, "umoci")
        && require::tool(test, "skopeo")
        && require::tool(test, "ldd"))
    {
        return;
    }
    let pod = Pod::new(false);
    std::fs::write(pod.path("context/Dockerfile"), DOCKERFILE).unwrap();
    std::fs::write(pod.path("context/app.txt"), "from the context\n").unwrap();

    let (ok, log) = pod.strata(&[
        "--context",
        "/workspace",
        "--dockerfile",
        "/workspace/Dockerfile",
        "--build-context",
        "base=oci-layout:///base",
        "--no-push",
        "--destination",
        "example.com/hostroot:1",
        "--oci-layout-path",
        "/out/oci",
        "--image-format=oci",
        "--force",
    ]);
    assert!(ok, "strata failed in the pod:\n{log}");
    assert!(log.contains("RUN isolation: container root"), "{log}");
    assert!(
        log.contains("Building in this container's own root"),
        "{log}"
    );
    assert!(
        log.contains("snapshot mode fuse unavailable, using full"),
        "{log}"
    );

    // The image, checked independently.
    let layout = pod.path("out/oci");
    let rootfs = tools::umoci_unpack(&layout, "1", &pod.path("bundle"));
    let read = |p: &str| {
        std::fs::read_to_string(rootfs.join(p)).unwrap_or_else(|e| panic!("/{p} in the image: {e}"))
    };
    assert_eq!(read("made-by-run"), "made\n");
    assert_eq!(
        read("opt/app/out.bin"),
        "compiled\n",
        "COPY --from the first stage"
    );
    assert_eq!(read("opt/app/app.txt"), "from the context\n");
    assert_eq!(read("opt/listing"), "app.txt\nout.bin\n");
    assert_eq!(
        read("opt/tested"),
        "tested\n",
        "FROM a stage saved before / was replaced"
    );
    assert!(
        read("resolv-seen").contains("# the pod's resolv.conf"),
        "RUN used the pod's mounted resolv.conf"
    );
    assert!(
        !rootfs.join("etc/group").exists(),
        "deleted by RUN: a whiteout"
    );
    assert!(rootfs.join("etc/passwd").is_file());
    assert!(
        rootfs.join("bin/vi").exists(),
        "deleted only in the first stage"
    );
    for p in [
        "kaniko",
        "workspace",
        "out",
        "base",
        "src",
        "etc/resolv.conf",
        "etc/pod-marker",
        "usr/share/pod",
    ] {
        assert!(!rootfs.join(p).exists(), "/{p} must not be in the image");
    }
    let config = tools::skopeo_config(&format!("oci:{}:1", layout.display()), &[]);
    assert!(strings(&config["config"]["Env"]).contains(&"GREETING=hello".to_string()));
    assert_eq!(strings(&config["config"]["Cmd"]), ["/bin/sh"]);
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().unwrap().len(),
        4,
        "base, 2 COPY --from, RUN"
    );

    // The pod's root now holds the image, as after a kaniko build; its mounts,
    // the work directory and the host are untouched.
    let root = pod.path("root");
    assert!(
        !root.join("etc/pod-marker").exists() && !root.join("usr/share/pod").exists(),
        "the container's files replaced"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("made-by-run")).unwrap(),
        "made\n"
    );
    assert!(root.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_to_string(pod.path("out/keep-me")).unwrap(),
        "a file on the output volume\n"
    );
    assert_eq!(
        std::fs::read_to_string(pod.path("context/app.txt")).unwrap(),
        "from the context\n"
    );
    assert_eq!(
        std::fs::read_to_string(pod.path("resolv.conf")).unwrap(),
        "nameserver 192.0.2.53\n# the pod's resolv.conf\n"
    );
    assert!(pod.path("base/index.json").is_file());
    let work = pod.work_dir();
    assert!(
        work.contains(&"strata".to_string()) && !work.iter().any(|n| n.starts_with("build-")),
        "{work:?}"
    );
    assert!(pod.path("host-sentinel").is_file());
    assert!(
        !Path::new("/made-by-run").exists() && !Path::new("/resolv-seen").exists(),
        "the host's / untouched"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(pod.dir.path().to_str().unwrap()),
        "the pod's mounts died with it"
    );
}

#[test]
fn redo_mode_ignore_path_cleanup_and_a_failing_run_in_the_container_root() {
    let test = "redo_mode_ignore_path_cleanup_and_a_failing_run_in_the_container_root";
    if !(require::root(test)
        && require::tool(test, "umoci")
        && require::tool(test, "skopeo")
        && require::tool(test, "ldd"))
    {
        return;
    }
    // /kaniko is a volume: the stage's base, staged there, is copied into /
    // rather than moved (rename cannot cross mounts).
    let pod = Pod::new(true);
    std::fs::write(
        pod.path("context/Dockerfile"),
        "FROM base\nRUN mkdir -p /var/cache/app /data && echo cached > /var/cache/app/x && echo kept > /data/y\n",
    )
    .unwrap();
    let build = [
        "--context",
        "/workspace",
        "--build-context",
        "base=oci-layout:///base",
        "--no-push",
        "--destination",
        "example.com/hostroot:2",
        "--oci-layout-path",
        "/out/oci",
        "--force",
        "--snapshot-mode=redo",
        "--verbosity=debug",
        "--ignore-path=/var/cache/app",
        "--cleanup",
    ];
    let (ok, log) = pod.strata(&build);
    assert!(ok, "strata failed in the pod:\n{log}");
    assert!(
        log.contains("snapshot: mode=redo") && !log.contains("fuse unavailable"),
        "{log}"
    );
    assert!(
        log.contains("--cleanup: emptied the container's root"),
        "{log}"
    );
    assert!(log.contains("is on another mount than /: copying"), "{log}");
    let rootfs = tools::umoci_unpack(&pod.path("out/oci"), "2", &pod.path("bundle"));
    assert_eq!(
        std::fs::read_to_string(rootfs.join("data/y")).unwrap(),
        "kept\n"
    );
    assert!(
        !rootfs.join("var/cache/app").exists(),
        "--ignore-path is not snapshotted"
    );
    // --cleanup emptied the root but for what is ignored.
    let root = pod.path("root");
    assert!(
        !root.join("bin").exists() && !root.join("data").exists(),
        "root emptied"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("var/cache/app/x")).unwrap(),
        "cached\n"
    );
    assert!(pod.work_dir().contains(&"strata".to_string()));

    // A second build in the same pod, failing: the step is named, nothing left behind.
    // (The dynamically linked test binary lost its libraries with the first build.)
    make_pod_root(&root);
    std::fs::write(
        pod.path("context/Dockerfile"),
        "FROM base\nRUN echo before && exit 3\n",
    )
    .unwrap();
    let (ok, log) = pod.strata(&build);
    assert!(!ok, "a failing RUN fails the build:\n{log}");
    assert!(
        log.contains("Dockerfile:2: RUN") && log.contains("returned a non-zero code: 3"),
        "{log}"
    );
    assert!(
        !pod.work_dir().iter().any(|n| n.starts_with("build-")),
        "{:?}",
        pod.work_dir()
    );
    assert!(!root.join("bin").exists(), "--cleanup on failure too");
}
