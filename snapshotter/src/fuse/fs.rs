//! The passthrough filesystem: `fuser`'s low-level inode API over the real
//! root, one `O_PATH` handle per inode, and a journal entry before every
//! operation that changes anything.
//!
//! Speed comes from the kernel doing as much as it may: entries, negative
//! entries and attributes are cached for the life of the mount (one RUN step,
//! during which nothing else changes the root), page cache is kept across
//! opens, directories are cached, `readdirplus` fills the dentry cache in one
//! round trip, writes are cached (writeback) or, where the kernel allows it,
//! reads and writes bypass this server entirely (FUSE passthrough).

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::journal::{Journal, Snap};
use super::node::{Node, Nodes, key_of};
use super::sys;
use super::Options;

/// State shared by the server threads and the `StepMount` that owns them.
pub struct Shared {
    pub nodes: Nodes,
    pub journal: Mutex<Journal>,
    /// `O_PATH` handle on the real root, for journal captures by path.
    pub root: OwnedFd,
    /// Set when a server thread failed: the journal cannot be trusted.
    pub failure: Mutex<Option<String>>,
    /// The FUSE connection id (`st_dev` of the mount), for aborting it.
    pub conn: AtomicU64,
    pub mountpoint: PathBuf,
    pub passthrough: AtomicBool,
    pub writeback: AtomicBool,
    pub opts: Options,
    /// Whether this process may use kernel passthrough (CAP_SYS_ADMIN in the
    /// initial user namespace).
    pub passthrough_allowed: bool,
    /// Set once the step's processes are done and the mount is being taken
    /// down: the server ending with an error from then on (a busy mount we
    /// had to abort) costs nothing, as the journal is already complete.
    pub stopping: AtomicBool,
}

impl Shared {
    pub fn journal(&self) -> MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn fail(&self, why: String) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(why);
        }
    }

    /// Aborts the FUSE connection so that every process using the mount gets
    /// ENOTCONN instead of waiting for a server that will not answer.
    pub fn abort(&self) {
        let conn = self.conn.load(Ordering::Acquire);
        let via_fusectl =
            conn != 0 && std::fs::write(format!("/sys/fs/fuse/connections/{conn}/abort"), b"1").is_ok();
        if !via_fusectl {
            super::mount::force_abort(&self.mountpoint);
        }
    }
}

/// Marks the step failed and aborts the connection if a handler panics.
struct PanicGuard<'a>(&'a Shared);

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail("a FUSE server thread panicked".into());
            self.0.abort();
        }
    }
}

/// A directory's entries (name, `d_type`) as read at `opendir`.
type DirEntries = Arc<Vec<(OsString, u8)>>;

pub struct Fs {
    pub shared: Arc<Shared>,
    dirs: Mutex<HashMap<u64, DirEntries>>,
    next_dir: AtomicU64,
    /// Open file handles (their descriptors), closed on release or, if the
    /// connection ends without releases, when the server ends.
    open: Mutex<std::collections::HashSet<RawFd>>,
}

impl Drop for Fs {
    fn drop(&mut self) {
        for fd in self.open.get_mut().unwrap_or_else(|e| e.into_inner()).drain() {
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
}

type Res<T> = Result<T, Errno>;

/// A usable descriptor for a node's inode: its own handle, an open file's,
/// or one opened just now from its parent directory and name.
enum Handle<'a> {
    Borrowed(BorrowedFd<'a>),
    Owned(OwnedFd),
}

impl Handle<'_> {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Handle::Borrowed(fd) => *fd,
            Handle::Owned(fd) => fd.as_fd(),
        }
    }
}

fn errno(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn cvt(ret: libc::c_int) -> Res<libc::c_int> {
    sys::cvt(ret).map_err(errno)
}

fn name_c(name: &OsStr) -> Res<CString> {
    sys::cstr(name).map_err(errno)
}

fn systime(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::new(0, nsec as u32)
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn dtype_to_file_type(d: u8) -> FileType {
    match d {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// `dev_t` as glibc encodes it, to the 32-bit encoding FUSE carries.
fn encode_rdev(rdev: u64) -> u32 {
    let (major, minor) = (libc::major(rdev) as u32, libc::minor(rdev) as u32);
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn decode_rdev(dev: u32) -> libc::dev_t {
    libc::makedev((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00))
}

fn attr(ino: u64, st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: systime(st.st_atime, st.st_atime_nsec),
        mtime: systime(st.st_mtime, st.st_mtime_nsec),
        ctime: systime(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: encode_rdev(st.st_rdev),
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        Some(TimeOrNow::Now) => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec { tv_sec: d.as_secs() as i64, tv_nsec: d.subsec_nanos() as i64 },
            Err(e) => {
                let d = e.duration();
                let mut sec = -(d.as_secs() as i64);
                let mut nsec = -(d.subsec_nanos() as i64);
                if nsec < 0 {
                    sec -= 1;
                    nsec += 1_000_000_000;
                }
                libc::timespec { tv_sec: sec, tv_nsec: nsec }
            }
        },
    }
}

thread_local! {
    static THREAD_READY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Gives each server thread its own umask of 0 (the kernel already applied
/// the caller's), without touching the rest of the process.
fn prepare_thread() {
    THREAD_READY.with(|ready| {
        if !ready.get() {
            unsafe {
                if libc::unshare(libc::CLONE_FS) == 0 {
                    libc::umask(0);
                }
            }
            ready.set(true);
        }
    });
}

impl Fs {
    pub fn new(shared: Arc<Shared>) -> Fs {
        Fs { shared, dirs: Mutex::new(HashMap::new()), next_dir: AtomicU64::new(1), open: Mutex::new(Default::default()) }
    }

    /// Turns an opened file into a file handle the kernel will release.
    fn file_handle(&self, file: OwnedFd) -> FileHandle {
        let fd = file.into_raw_fd();
        self.open.lock().unwrap_or_else(|e| e.into_inner()).insert(fd);
        FileHandle(fd as u64)
    }

    fn guard(&self) -> PanicGuard<'_> {
        prepare_thread();
        PanicGuard(&self.shared)
    }

    fn ttl(&self) -> Duration {
        self.shared.opts.ttl
    }

    fn handle<'a>(&self, node: &'a Node, fh: Option<FileHandle>) -> Res<Handle<'a>> {
        if let Some(fd) = node.fd() {
            return Ok(Handle::Borrowed(fd));
        }
        if let Some(fh) = fh {
            // SAFETY: the kernel passes a handle this server opened and has not released.
            return Ok(Handle::Borrowed(unsafe { BorrowedFd::borrow_raw(fh.0 as RawFd) }));
        }
        let (parent, name) = node.link.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let parent = self.shared.nodes.get(parent).ok_or(Errno::ESTALE)?;
        let fd = sys::open_path_at(parent.dir_fd().map_err(errno)?, &name_c(&name)?).map_err(errno)?;
        let st = sys::stat_fd(fd.as_fd()).map_err(errno)?;
        if key_of(&st) != node.key {
            return Err(Errno::ESTALE);
        }
        Ok(Handle::Owned(fd))
    }

    fn node(&self, ino: INodeNo) -> Res<Arc<Node>> {
        self.shared.nodes.get(ino.0).ok_or(Errno::ESTALE)
    }

    /// Journals `name` in `parent` before an operation replaces or removes
    /// it, and the parent directory whose mtime the operation changes.
    fn touch_entry(&self, parent: &Node, name: &CStr) -> Res<PathBuf> {
        let dir = self.shared.nodes.path(parent.ino).ok_or(Errno::ESTALE)?;
        let path = dir.join(OsStr::from_bytes(name.to_bytes()));
        if !self.shared.journal().has_path(&path) {
            let live = Snap::at(parent.dir_fd().map_err(errno)?, name).map_err(errno)?;
            self.shared.journal().record_path(path.clone(), live);
        }
        self.touch_inode(parent, false, None)?;
        Ok(path)
    }

    /// Journals a path (relative to the root) before an operation changes what it resolves to.
    fn touch_path(&self, path: PathBuf) -> Res<()> {
        if self.shared.journal().has_path(&path) {
            return Ok(());
        }
        let live = Snap::beneath(self.shared.root.as_fd(), &path).map_err(errno)?;
        self.shared.journal().record_path(path, live);
        Ok(())
    }

    /// Journals an inode before an operation changes its own state; `written`
    /// when the operation changes its contents.
    fn touch_inode(&self, node: &Node, written: bool, fh: Option<FileHandle>) -> Res<()> {
        if node.journaled.load(Ordering::Acquire) && (!written || node.written.load(Ordering::Acquire)) {
            return Ok(());
        }
        if !node.journaled.load(Ordering::Acquire) {
            let live = Snap::of_fd(self.handle(node, fh)?.fd()).map_err(errno)?;
            let path = self.shared.nodes.path(node.ino);
            self.shared.journal().record_inode(live, path);
            node.journaled.store(true, Ordering::Release);
        }
        if written {
            self.shared.journal().mark_written(node.key, true);
            node.written.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Runs `op` (setxattr or removexattr on the inode's /proc path and the
    /// attribute's name) once the inode's metadata change is journalled.
    fn change_xattr(&self, ino: INodeNo, name: &OsStr, reply: ReplyEmpty, op: impl FnOnce(&CStr, &CStr) -> libc::c_int) {
        let _g = self.guard();
        let r = (|| {
            let node = self.node(ino)?;
            let cname = name_c(name)?;
            self.touch_inode(&node, false, None)?;
            let handle = self.handle(&node, None)?;
            let proc = sys::proc_path(handle.fd().as_raw_fd());
            cvt(op(&proc, &cname)).map(drop)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lookup_node(&self, parent: &Node, name: &CStr, created: bool) -> Res<(Arc<Node>, libc::stat)> {
        let st = sys::stat_at(parent.dir_fd().map_err(errno)?, name).map_err(errno)?;
        let node = self.shared.nodes.lookup(parent, name, &st, created).map_err(errno)?;
        Ok((node, st))
    }

    /// New inodes belong to the caller, as if it had made them itself.
    fn chown_new(&self, req: &Request, parent: &Node, name: &CStr) -> Res<()> {
        if req.uid() == 0 && req.gid() == 0 {
            return Ok(());
        }
        let pst = sys::stat_fd(parent.dir_fd().map_err(errno)?).map_err(errno)?;
        let gid = if pst.st_mode & libc::S_ISGID != 0 { pst.st_gid } else { req.gid() };
        cvt(unsafe { libc::fchownat(parent.dir_fd().map_err(errno)?.as_raw_fd(), name.as_ptr(), req.uid(), gid, libc::AT_SYMLINK_NOFOLLOW) })?;
        Ok(())
    }

    fn entry_reply(&self, reply: ReplyEntry, r: Res<(Arc<Node>, libc::stat)>) {
        match r {
            Ok((node, st)) => reply.entry(&self.ttl(), &attr(node.ino, &st), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    /// Creates something in `parent` with `make`, journaled and owned by the caller.
    fn make(&self, req: &Request, parent: INodeNo, name: &OsStr, make: impl FnOnce(RawFd, &CStr) -> Res<()>) -> Res<(Arc<Node>, libc::stat)> {
        let parent = self.node(parent)?;
        let cname = name_c(name)?;
        self.touch_entry(&parent, &cname)?;
        make(parent.dir_fd().map_err(errno)?.as_raw_fd(), &cname)?;
        self.chown_new(req, &parent, &cname)?;
        self.lookup_node(&parent, &cname, true)
    }

    /// Flags a file is really opened with: with writeback caching the kernel
    /// may read to fill pages of a write-only file and appends itself.
    fn real_flags(&self, flags: i32) -> i32 {
        let mut f = flags & !(libc::O_NOFOLLOW);
        if self.shared.writeback.load(Ordering::Relaxed) {
            if f & libc::O_ACCMODE == libc::O_WRONLY {
                f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
            }
            f &= !libc::O_APPEND;
        }
        f
    }

    fn journal_open(&self, node: &Node, flags: i32) -> Res<()> {
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if writing || flags & libc::O_TRUNC != 0 {
            self.touch_inode(node, flags & libc::O_TRUNC != 0, None)?;
            if writing && self.shared.passthrough.load(Ordering::Relaxed) {
                self.shared.journal().mark_written(node.key, false);
            }
        }
        Ok(())
    }

    /// The passthrough backing file of a regular file, shared by its opens;
    /// `None` when passthrough is off or the kernel refused it. The kernel
    /// opens its own backing file per FUSE file (with that file's flags) from
    /// the registered one, so the first open's descriptor serves for all.
    fn backing(
        &self,
        node: &Node,
        file: BorrowedFd<'_>,
        open_backing: impl FnOnce(BorrowedFd<'_>) -> io::Result<fuser::BackingId>,
    ) -> Option<Arc<fuser::BackingId>> {
        if !self.shared.passthrough.load(Ordering::Relaxed) || node.kind != libc::S_IFREG {
            return None;
        }
        let mut slot = node.backing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, count)) = slot.as_mut() {
            *count += 1;
            return Some(id.clone());
        }
        match open_backing(file) {
            Ok(id) => {
                let id = Arc::new(id);
                *slot = Some((id.clone(), 1));
                Some(id)
            }
            Err(e) => {
                tracing::debug!("FUSE passthrough refused: {e}"); 
                None
            }
        }
    }

    fn release_backing(&self, node: &Node) {
        let mut slot = node.backing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, count)) = slot.as_mut() {
            *count -= 1;
            if *count == 0 {
                *slot = None;
            }
        }
    }

    fn load_dir(&self, node: &Node) -> Res<DirEntries> {
        let entries = sys::read_dir(node.dir_fd().map_err(errno)?).map_err(errno)?;
        Ok(Arc::new(entries.into_iter().map(|(n, _, t)| (n, t)).collect()))
    }

    fn dir_entries(&self, fh: FileHandle) -> Res<DirEntries> {
        self.dirs.lock().unwrap_or_else(|e| e.into_inner()).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    #[allow(clippy::too_many_arguments)] // FUSE's setattr, minus what Linux never sets
    fn do_setattr(
        &self,
        node: &Node,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> Res<libc::stat> {
        self.touch_inode(node, size.is_some(), fh)?;
        let handle = self.handle(node, fh)?;
        let proc = sys::proc_path(handle.fd().as_raw_fd());
        if let Some(mode) = mode {
            match fh {
                Some(fh) => cvt(unsafe { libc::fchmod(fh.0 as RawFd, mode & 0o7777) })?,
                None => cvt(unsafe { libc::chmod(proc.as_ptr(), mode & 0o7777) })?,
            };
        }
        if uid.is_some() || gid.is_some() {
            cvt(unsafe {
                libc::fchownat(
                    handle.fd().as_raw_fd(),
                    c"".as_ptr(),
                    uid.unwrap_or(u32::MAX),
                    gid.unwrap_or(u32::MAX),
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        if let Some(size) = size {
            match fh {
                Some(fh) => cvt(unsafe { libc::ftruncate(fh.0 as RawFd, size as libc::off_t) })?,
                None => cvt(unsafe { libc::truncate(proc.as_ptr(), size as libc::off_t) })?,
            };
        }
        if atime.is_some() || mtime.is_some() {
            let times = [timespec(atime), timespec(mtime)];
            if node.is_symlink() {
                let (parent, name) = node.link.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let parent = self.shared.nodes.get(parent).ok_or(Errno::ESTALE)?;
                let cname = name_c(&name)?;
                cvt(unsafe { libc::utimensat(parent.dir_fd().map_err(errno)?.as_raw_fd(), cname.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })?;
            } else {
                cvt(unsafe { libc::utimensat(libc::AT_FDCWD, proc.as_ptr(), times.as_ptr(), 0) })?;
            }
        }
        sys::stat_fd(handle.fd()).map_err(errno)
    }

    fn do_rename(&self, parent: INodeNo, name: &OsStr, newparent: INodeNo, newname: &OsStr, flags: RenameFlags) -> Res<()> {
        let (from_dir, to_dir) = (self.node(parent)?, self.node(newparent)?);
        let (from, to) = (name_c(name)?, name_c(newname)?);
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        let src = sys::stat_at(from_dir.dir_fd().map_err(errno)?, &from).map_err(errno)?;
        let dst = match sys::stat_at(to_dir.dir_fd().map_err(errno)?, &to) {
            Ok(st) => Some(st),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => return Err(errno(e)),
        };
        let src_path = self.touch_entry(&from_dir, &from)?;
        let dst_path = self.touch_entry(&to_dir, &to)?;
        // What a renamed directory holds changes paths too: all of them, on both sides.
        let mut subtrees = Vec::new();
        if src.st_mode & libc::S_IFMT == libc::S_IFDIR {
            subtrees.push(src_path.clone());
        }
        if exchange && dst.is_some_and(|d| d.st_mode & libc::S_IFMT == libc::S_IFDIR) {
            subtrees.push(dst_path.clone());
        }
        for tree in &subtrees {
            let below = super::finish::list_tree(self.shared.root.as_fd(), tree).map_err(errno)?;
            for path in below {
                let rel = path.strip_prefix(tree).map_err(|_| Errno::EIO)?.to_path_buf();
                self.touch_path(src_path.join(&rel))?;
                self.touch_path(dst_path.join(&rel))?;
            }
        }
        cvt(unsafe {
            libc::renameat2(from_dir.dir_fd().map_err(errno)?.as_raw_fd(), from.as_ptr(), to_dir.dir_fd().map_err(errno)?.as_raw_fd(), to.as_ptr(), flags.bits())
        })?;
        if let Some(node) = self.shared.nodes.by_key((src.st_dev, src.st_ino)) {
            *node.link.lock().unwrap_or_else(|e| e.into_inner()) = (to_dir.ino, newname.to_os_string());
        }
        self.shared.journal().moved((src.st_dev, src.st_ino), &dst_path);
        if exchange && let Some(dst) = dst {
            if let Some(node) = self.shared.nodes.by_key((dst.st_dev, dst.st_ino)) {
                *node.link.lock().unwrap_or_else(|e| e.into_inner()) = (from_dir.ino, name.to_os_string());
            }
            self.shared.journal().moved((dst.st_dev, dst.st_ino), &src_path);
        }
        Ok(())
    }
}

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let caps = config.capabilities();
        let mut want = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_ASYNC_DIO
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            // The server clears set-id bits itself (see `write`); the kernel
            // then asks for security.capability only before a file's first
            // write, not before every write.
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        let passthrough = self.shared.opts.passthrough
            && self.shared.passthrough_allowed
            && caps.contains(InitFlags::FUSE_PASSTHROUGH)
            && config.set_max_stack_depth(2).is_ok();
        if passthrough {
            // The kernel refuses passthrough together with writeback caching.
            want |= InitFlags::FUSE_PASSTHROUGH;
        } else if self.shared.opts.writeback_cache {
            want |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        want &= caps;
        let _ = config.add_capabilities(want);
        self.shared.passthrough.store(want.contains(InitFlags::FUSE_PASSTHROUGH), Ordering::Relaxed);
        self.shared.writeback.store(want.contains(InitFlags::FUSE_WRITEBACK_CACHE), Ordering::Relaxed);
        let _ = config.set_max_write(1 << 20).or_else(|max| config.set_max_write(max));
        let _ = config.set_max_readahead(1 << 20).or_else(|max| config.set_max_readahead(max));
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _g = self.guard();
        let r = (|| {
            let parent = self.node(parent)?;
            let cname = name_c(name)?;
            self.lookup_node(&parent, &cname, false)
        })();
        match r {
            Err(e) if e == Errno::ENOENT => {
                // A negative entry the kernel may cache: nothing else changes the root.
                let mut a = attr(0, &unsafe { std::mem::zeroed() });
                a.ino = INodeNo(0);
                reply.entry(&self.ttl(), &a, Generation(0));
            }
            r => self.entry_reply(reply, r),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.shared.nodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _g = self.guard();
        match self.node(ino).and_then(|n| sys::stat_fd(self.handle(&n, fh)?.fd()).map_err(errno)) {
            Ok(st) => reply.attr(&self.ttl(), &attr(ino.0, &st)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _g = self.guard();
        match self.node(ino).and_then(|n| self.do_setattr(&n, mode, uid, gid, size, atime, mtime, fh)) {
            Ok(st) => reply.attr(&self.ttl(), &attr(ino.0, &st)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _g = self.guard();
        match self.node(ino).and_then(|n| sys::readlink_fd(self.handle(&n, None)?.fd()).map_err(errno)) {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let _g = self.guard();
        let r = self.make(req, parent, name, |dir, n| {
            cvt(unsafe { libc::mknodat(dir, n.as_ptr(), mode & !umask, decode_rdev(rdev)) }).map(drop)
        });
        self.entry_reply(reply, r);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let _g = self.guard();
        let r = self.make(req, parent, name, |dir, n| cvt(unsafe { libc::mkdirat(dir, n.as_ptr(), mode & !umask) }).map(drop));
        self.entry_reply(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _g = self.guard();
        let r = (|| {
            let parent = self.node(parent)?;
            let cname = name_c(name)?;
            self.touch_entry(&parent, &cname)?;
            cvt(unsafe { libc::unlinkat(parent.dir_fd().map_err(errno)?.as_raw_fd(), cname.as_ptr(), 0) }).map(drop)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _g = self.guard();
        let r = (|| {
            let parent = self.node(parent)?;
            let cname = name_c(name)?;
            self.touch_entry(&parent, &cname)?;
            cvt(unsafe { libc::unlinkat(parent.dir_fd().map_err(errno)?.as_raw_fd(), cname.as_ptr(), libc::AT_REMOVEDIR) }).map(drop)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let _g = self.guard();
        let r = self.make(req, parent, link_name, |dir, n| {
            let t = name_c(target.as_os_str())?;
            cvt(unsafe { libc::symlinkat(t.as_ptr(), dir, n.as_ptr()) }).map(drop)
        });
        self.entry_reply(reply, r);
    }

    fn rename(&self, _req: &Request, parent: INodeNo, name: &OsStr, newparent: INodeNo, newname: &OsStr, flags: RenameFlags, reply: ReplyEmpty) {
        let _g = self.guard();
        match self.do_rename(parent, name, newparent, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let _g = self.guard();
        let r = (|| {
            let node = self.node(ino)?;
            let parent = self.node(newparent)?;
            let cname = name_c(newname)?;
            self.touch_entry(&parent, &cname)?;
            let handle = self.handle(&node, None)?;
            let proc = sys::proc_path(handle.fd().as_raw_fd());
            cvt(unsafe { libc::linkat(libc::AT_FDCWD, proc.as_ptr(), parent.dir_fd().map_err(errno)?.as_raw_fd(), cname.as_ptr(), libc::AT_SYMLINK_FOLLOW) })?;
            self.lookup_node(&parent, &cname, false)
        })();
        self.entry_reply(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _g = self.guard();
        let r = (|| {
            let node = self.node(ino)?;
            let f = self.real_flags(flags.0);
            self.journal_open(&node, f)?;
            let file = sys::reopen(self.handle(&node, None)?.fd(), f).map_err(errno)?;
            Ok((node, file))
        })();
        match r {
            Ok((node, file)) => {
                let backing = self.backing(&node, file.as_fd(), |fd| reply.open_backing(fd));
                let fh = self.file_handle(file);
                match backing {
                    Some(id) => reply.opened_passthrough(fh, FopenFlags::FOPEN_NOFLUSH, &id),
                    None if self.shared.passthrough.load(Ordering::Relaxed) => reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO),
                    None => reply.opened(fh, FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, size: u32, _flags: OpenFlags, _lock: Option<LockOwner>, reply: ReplyData) {
        let _g = self.guard();
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < size as usize {
                buf.resize(size as usize, 0);
            }
            match sys::pread_full(fh.0 as RawFd, &mut buf[..size as usize], offset) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _g = self.guard();
        let r = (|| {
            let node = self.node(ino)?;
            self.touch_inode(&node, true, Some(fh))?;
            if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
                kill_suidgid(fh.0 as RawFd)?;
            }
            let mut done = 0;
            while done < data.len() {
                let n = unsafe {
                    libc::pwrite(fh.0 as RawFd, data[done..].as_ptr().cast(), data.len() - done, (offset + done as u64) as libc::off_t)
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(errno(e));
                }
                done += n as usize;
            }
            Ok(done)
        })();
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock: LockOwner, reply: ReplyEmpty) {
        // Nothing to do at close. With writeback caching the kernel ignores
        // FOPEN_NOFLUSH and asks on every close; ENOSYS makes it stop asking
        // for the rest of the mount (it writes dirty pages back either way).
        reply.error(Errno::ENOSYS);
    }

    fn release(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _flags: OpenFlags, _lock: Option<LockOwner>, _flush: bool, reply: ReplyEmpty) {
        let _g = self.guard();
        if self.open.lock().unwrap_or_else(|e| e.into_inner()).remove(&(fh.0 as RawFd)) {
            drop(unsafe { OwnedFd::from_raw_fd(fh.0 as RawFd) });
        }
        if let Some(node) = self.shared.nodes.get(ino.0) {
            self.release_backing(&node);
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let fd = fh.0 as RawFd;
        let r = if datasync { unsafe { libc::fdatasync(fd) } } else { unsafe { libc::fsync(fd) } };
        match cvt(r) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _g = self.guard();
        match self.node(ino).and_then(|n| self.load_dir(&n)) {
            Ok(entries) => {
                let fh = self.next_dir.fetch_add(1, Ordering::Relaxed);
                self.dirs.lock().unwrap_or_else(|e| e.into_inner()).insert(fh, entries);
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR);
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _g = self.guard();
        let entries = match self.dir_entries(fh) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        for (i, (name, dtype)) in entries.iter().enumerate().skip(offset as usize) {
            // The inode number here is informational only; lookups give the real one.
            if reply.add(INodeNo(ino.0.wrapping_add(i as u64 + 1)), i as u64 + 1, dtype_to_file_type(*dtype), name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let _g = self.guard();
        let r = (|| {
            let dir = self.node(ino)?;
            let entries = self.dir_entries(fh)?;
            Ok((dir, entries))
        })();
        let (dir, entries) = match r {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        for (i, (name, _)) in entries.iter().enumerate().skip(offset as usize) {
            let Ok(cname) = name_c(name) else { continue };
            let (node, st) = match self.lookup_node(&dir, &cname, false) {
                Ok(x) => x,
                Err(_) => continue, // gone since opendir
            };
            if reply.add(INodeNo(node.ino), i as u64 + 1, name, &self.ttl(), &attr(node.ino, &st), Generation(0)) {
                self.shared.nodes.forget(node.ino, 1);
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.dirs.lock().unwrap_or_else(|e| e.into_inner()).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        match cvt(unsafe { libc::fstatvfs(self.shared.root.as_raw_fd(), &mut st) }) {
            Ok(_) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, value: &[u8], flags: i32, _position: u32, reply: ReplyEmpty) {
        self.change_xattr(ino, name, reply, |proc, cname| unsafe {
            libc::setxattr(proc.as_ptr(), cname.as_ptr(), value.as_ptr().cast(), value.len(), flags)
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _g = self.guard();
        let r = (|| {
            let node = self.node(ino)?;
            let cname = name_c(name)?;
            sys::get_xattr(self.handle(&node, None)?.fd(), &cname).map_err(errno)
        })();
        xattr_reply(reply, r, size);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _g = self.guard();
        let r = self.node(ino).and_then(|n| sys::list_xattrs(self.handle(&n, None)?.fd()).map_err(errno));
        xattr_reply(reply, r, size);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.change_xattr(ino, name, reply, |proc, cname| unsafe { libc::removexattr(proc.as_ptr(), cname.as_ptr()) });
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // `default_permissions`: the kernel checks permissions itself.
        reply.ok();
    }

    fn create(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, flags: i32, reply: ReplyCreate) {
        let _g = self.guard();
        let f = self.real_flags(flags);
        let mut file = None;
        let r = self.make(req, parent, name, |dir, n| {
            let fd = sys::open_at(unsafe { BorrowedFd::borrow_raw(dir) }, n, f | libc::O_CREAT, mode & !umask).map_err(errno)?;
            file = Some(fd);
            Ok(())
        });
        match (r, file) {
            (Ok((node, st)), Some(file)) => {
                if self.shared.passthrough.load(Ordering::Relaxed) {
                    self.shared.journal().mark_written(node.key, false);
                }
                let backing = self.backing(&node, file.as_fd(), |fd| reply.open_backing(fd));
                let fh = self.file_handle(file);
                let a = attr(node.ino, &st);
                match backing {
                    Some(id) => reply.created_passthrough(&self.ttl(), &a, Generation(0), fh, FopenFlags::FOPEN_NOFLUSH, &id),
                    None if self.shared.passthrough.load(Ordering::Relaxed) => {
                        reply.created(&self.ttl(), &a, Generation(0), fh, FopenFlags::FOPEN_DIRECT_IO)
                    }
                    None => reply.created(&self.ttl(), &a, Generation(0), fh, FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH),
                }
            }
            (Err(e), _) => reply.error(e),
            (Ok(_), None) => reply.error(Errno::EIO),
        }
    }

    fn fallocate(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, length: u64, mode: i32, reply: ReplyEmpty) {
        let _g = self.guard();
        let r = (|| {
            let node = self.node(ino)?;
            self.touch_inode(&node, true, Some(fh))?;
            cvt(unsafe { libc::fallocate(fh.0 as RawFd, mode, offset as libc::off_t, length as libc::off_t) }).map(drop)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let r = unsafe { libc::lseek(fh.0 as RawFd, offset, whence) };
        if r < 0 {
            reply.error(errno(io::Error::last_os_error()));
        } else {
            reply.offset(r);
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _g = self.guard();
        let r = (|| {
            let node = self.node(ino_out)?;
            self.touch_inode(&node, true, Some(fh_out))?;
            let mut off_in = offset_in as libc::loff_t;
            let mut off_out = offset_out as libc::loff_t;
            let n = unsafe {
                libc::syscall(
                    libc::SYS_copy_file_range,
                    fh_in.0 as RawFd,
                    &mut off_in as *mut libc::loff_t,
                    fh_out.0 as RawFd,
                    &mut off_out as *mut libc::loff_t,
                    len as usize,
                    0u32,
                )
            };
            if n < 0 { Err(errno(io::Error::last_os_error())) } else { Ok(n as u32) }
        })();
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }
}

/// What a write by someone without CAP_FSETID does to set-id bits.
fn kill_suidgid(fd: RawFd) -> Res<()> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    let mut mode = st.st_mode & 0o7777;
    if mode & libc::S_ISUID != 0 || mode & (libc::S_ISGID | libc::S_IXGRP) == (libc::S_ISGID | libc::S_IXGRP) {
        mode &= !(libc::S_ISUID | libc::S_ISGID);
        cvt(unsafe { libc::fchmod(fd, mode) })?;
    }
    Ok(())
}

fn xattr_reply(reply: ReplyXattr, r: Res<Vec<u8>>, size: u32) {
    match r {
        Ok(data) if size == 0 => reply.size(data.len() as u32),
        Ok(data) if data.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(data) => reply.data(&data),
        Err(e) => reply.error(e),
    }
}
