//! The RUN child, from clone to exec: standard streams, the user namespace
//! handshake, the mount namespace and pivot_root (or chroot), hostname,
//! loopback, capabilities, credentials, working directory, exec. Between
//! clone and exec only raw system calls on the prepared plan: strata is
//! multithreaded, so the child must not allocate, take locks, or call glibc
//! wrappers that involve the threads it copied (setuid and friends).

use std::ffi::{CString, c_char};
use std::os::fd::RawFd;

use super::super::isolation::Isolation;
use super::super::{caps, network};
use super::ops::{Op, errno, remount, run_op};

/// Error codes the child reports for steps that are not ops.
pub(super) mod phase {
    pub(crate) const SYNC: u32 = 1_000_000;
    pub(crate) const STDIO: u32 = 1_000_001;
    pub(crate) const PRIVATE: u32 = 1_000_002;
    pub(crate) const ROOT_BIND: u32 = 1_000_003;
    pub(crate) const PIVOT: u32 = 1_000_004;
    pub(crate) const HOSTNAME: u32 = 1_000_005;
    pub(crate) const LOOPBACK: u32 = 1_000_006;
    pub(crate) const CAPS: u32 = 1_000_007;
    pub(crate) const GROUPS: u32 = 1_000_008;
    pub(crate) const GID: u32 = 1_000_009;
    pub(crate) const UID: u32 = 1_000_010;
    pub(crate) const WORKDIR: u32 = 1_000_011;
    pub(crate) const EXEC: u32 = 1_000_012;
    pub(crate) const CHROOT: u32 = 1_000_013;
}

/// Everything the child needs, prepared by the parent.
pub(super) struct ChildPlan {
    pub(super) level: Isolation,
    pub(super) root: CString,
    pub(super) ops: Vec<Op>,
    pub(super) hostname: CString,
    pub(super) network_none: bool,
    pub(super) uid: libc::uid_t,
    pub(super) gid: libc::gid_t,
    pub(super) groups: Vec<libc::gid_t>,
    pub(super) set_groups: bool,
    pub(super) workdir: CString,
    pub(super) argv_ptrs: Vec<*const c_char>,
    pub(super) envp_ptrs: Vec<*const c_char>,
    pub(super) candidates: Vec<CString>,
    pub(super) stdin: RawFd,
    pub(super) output: RawFd,
    pub(super) errors: RawFd,
    pub(super) sync: Option<RawFd>,
    pub(super) parent_pid: libc::pid_t,
}

/// Last words of the child: report which step failed and with what errno.
pub(super) fn fail(plan: &ChildPlan, code: u32, errno: i32) -> ! {
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&code.to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: write and _exit only.
    unsafe {
        libc::write(plan.errors, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}

/// The child, from clone to exec. Never returns.
pub(super) fn child_main(plan: &ChildPlan) -> ! {
    // SAFETY: raw system calls on the prepared plan; see the module comment.
    unsafe {
        // Die with strata from the start (set again after the credentials
        // change, which clears it).
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::dup2(plan.stdin, 0) < 0
            || libc::dup2(plan.output, 1) < 0
            || libc::dup2(plan.output, 2) < 0
        {
            fail(plan, phase::STDIO, errno());
        }
        if let Some(sync) = plan.sync {
            let mut b = [0u8; 1];
            if libc::read(sync, b.as_mut_ptr().cast(), 1) != 1 {
                fail(plan, phase::SYNC, errno());
            }
        }
        if plan.level.uses_namespaces() {
            setup_namespaces(plan);
        } else {
            libc::setpgid(0, 0);
            if plan.level == Isolation::Chroot
                && (libc::chroot(plan.root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0)
            {
                fail(plan, phase::CHROOT, errno());
            }
        }
        // Raw system calls: glibc's wrappers would try to change the credentials
        // of every thread strata had, which do not exist in this child, and hang.
        if plan.set_groups
            && libc::syscall(libc::SYS_setgroups, plan.groups.len(), plan.groups.as_ptr()) != 0
        {
            fail(plan, phase::GROUPS, errno());
        }
        if libc::syscall(libc::SYS_setresgid, plan.gid, plan.gid, plan.gid) != 0 {
            fail(plan, phase::GID, errno());
        }
        if libc::syscall(libc::SYS_setresuid, plan.uid, plan.uid, plan.uid) != 0 {
            fail(plan, phase::UID, errno());
        }
        if plan.uid == 0
            && plan.level.uses_namespaces()
            && let Err(e) = caps::limit_to_defaults()
        {
            fail(plan, phase::CAPS, e);
        }
        // Credentials changes clear the parent-death signal: set it last.
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if !plan.level.uses_namespaces() && libc::getppid() != plan.parent_pid {
            libc::_exit(137);
        }
        // No descriptor of strata's, whoever opened it, reaches the command.
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            4u32, /* CLOSE_RANGE_CLOEXEC */
        );
        if libc::chdir(plan.workdir.as_ptr()) != 0 {
            fail(plan, phase::WORKDIR, errno());
        }
        let mut last = libc::ENOENT;
        for candidate in &plan.candidates {
            libc::execve(
                candidate.as_ptr(),
                plan.argv_ptrs.as_ptr(),
                plan.envp_ptrs.as_ptr(),
            );
            match errno() {
                libc::ENOENT | libc::ENOTDIR => {}
                e => last = e,
            }
        }
        fail(plan, phase::EXEC, last)
    }
}

/// Mount namespace set-up and pivot_root (namespace levels).
pub(super) unsafe fn setup_namespaces(plan: &ChildPlan) {
    // SAFETY: raw system calls on the prepared plan.
    unsafe {
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            fail(plan, phase::PRIVATE, errno());
        }
        if libc::mount(
            plan.root.as_ptr(),
            plan.root.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ) != 0
        {
            fail(plan, phase::ROOT_BIND, errno());
        }
        // Device nodes in the root (or made by the RUN with CAP_MKNOD) cannot
        // be opened: only the bound /dev entries work, so a RUN cannot reach
        // a host disk through a node of its own.
        if let Err(e) = remount(plan.root.as_ptr(), libc::MS_NODEV) {
            fail(plan, phase::ROOT_BIND, e);
        }
        let rootfd = libc::open(
            plan.root.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if rootfd < 0 {
            fail(plan, phase::ROOT_BIND, errno());
        }
        for (i, op) in plan.ops.iter().enumerate() {
            if let Err(e) = run_op(rootfd, op) {
                fail(plan, i as u32, e);
            }
        }
        libc::close(rootfd);
        if libc::chdir(plan.root.as_ptr()) != 0
            || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0
            || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0
            || libc::chdir(c"/".as_ptr()) != 0
        {
            fail(plan, phase::PIVOT, errno());
        }
        let name = plan.hostname.as_bytes();
        if libc::sethostname(name.as_ptr().cast(), name.len()) != 0 {
            fail(plan, phase::HOSTNAME, errno());
        }
        if plan.network_none
            && let Err(e) = network::loopback_up()
        {
            fail(plan, phase::LOOPBACK, e);
        }
        if let Err(e) = caps::drop_bounding() {
            fail(plan, phase::CAPS, e);
        }
    }
}
