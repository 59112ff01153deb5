//! FUSE journaling snapshotter: serves a root through a passthrough FUSE
//! filesystem for the length of one RUN step and journals every change, so
//! that the step's ChangeSet costs what the step changed, not what the root
//! holds. See docs/fuse.md.
//!
//! `probe()` says in one line why FUSE cannot be used here, `mount_step`
//! serves `root` at `mountpoint`, and `StepMount::finish` unmounts and turns
//! the journal into the canonical ChangeSet (see `changeset`). Dropping a
//! `StepMount` (an error path, a panic) unmounts too; `cleanup_stale` removes
//! what a SIGKILLed build left behind.

mod finish;
mod fs;
mod journal;
mod mount;
mod node;
mod sys;

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::changeset::ChangeSet;

pub use mount::{FS_TYPE, cleanup_abandoned, cleanup_stale, passthrough_allowed};

/// Why the FUSE journal cannot be used here, in one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// How a step's FUSE server runs. The defaults are what strata uses.
#[derive(Debug, Clone)]
pub struct Options {
    /// Server threads, each reading its own cloned `/dev/fuse` descriptor.
    pub threads: usize,
    /// Use the kernel's FUSE passthrough for file I/O where this process may
    /// (CAP_SYS_ADMIN in the initial user namespace).
    pub passthrough: bool,
    /// Let the kernel cache writes (used when passthrough is not).
    pub writeback_cache: bool,
    /// How long the kernel may trust entries and attributes. Nothing but the
    /// step changes the root while it is mounted, so: the whole step.
    pub ttl: Duration,
}

impl Default for Options {
    fn default() -> Options {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        // More threads make busy steps faster but every step's mount slower
        // (docs/fuse.md, "Speed").
        Options { threads: cores.clamp(2, 4), passthrough: true, writeback_cache: true, ttl: Duration::from_secs(24 * 3600) }
    }
}

/// What a mounted step ended up using, and how much it journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub passthrough: bool,
    pub writeback_cache: bool,
    pub journaled_paths: usize,
    pub journaled_inodes: usize,
}

/// One mounted step: RUN chroots into `mountpoint()`.
pub struct StepMount {
    mountpoint: PathBuf,
    excluded: Vec<PathBuf>,
    shared: Arc<fs::Shared>,
    server: Option<JoinHandle<io::Result<()>>>,
    /// Closed (dropped) by the server thread when it ends.
    server_done: Option<crossbeam_channel::Receiver<()>>,
    mounted: bool,
}

/// Checks that a FUSE filesystem can be mounted here, by mounting one.
pub fn probe() -> Result<(), Unavailable> {
    mount::probe()
}

/// Serves `root` at `mountpoint` (an existing empty directory) with the
/// default options. `excluded` paths (relative to the root) never appear in
/// the ChangeSet.
pub fn mount_step(root: &Path, mountpoint: &Path, excluded: &[PathBuf]) -> Result<StepMount, Unavailable> {
    mount_step_with(root, mountpoint, excluded, &Options::default())
}

pub fn mount_step_with(root: &Path, mountpoint: &Path, excluded: &[PathBuf], opts: &Options) -> Result<StepMount, Unavailable> {
    // Before the inode table sizes its descriptor budget from the limit.
    mount::raise_fd_limit();
    let root_c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(root.as_os_str()))
        .map_err(|_| Unavailable(format!("{}: path contains a NUL byte", root.display())))?;
    let root_fd = sys::open_at(
        unsafe { std::os::fd::BorrowedFd::borrow_raw(libc::AT_FDCWD) },
        &root_c,
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
    .map_err(|e| Unavailable(format!("{}: {e}", root.display())))?;
    let table_fd = root_fd.try_clone().map_err(|e| Unavailable(format!("{}: {e}", root.display())))?;
    let nodes = node::Nodes::new(table_fd).map_err(|e| Unavailable(format!("{}: {e}", root.display())))?;
    let shared = Arc::new(fs::Shared {
        nodes,
        journal: Mutex::new(journal::Journal::default()),
        root: root_fd,
        failure: Mutex::new(None),
        conn: AtomicU64::new(0),
        mountpoint: mountpoint.to_path_buf(),
        passthrough: AtomicBool::new(false),
        writeback: AtomicBool::new(false),
        opts: opts.clone(),
        passthrough_allowed: opts.passthrough && mount::passthrough_allowed(),
        stopping: AtomicBool::new(false),
    });

    let dev = mount::open_dev()?;
    mount::mount(&dev, mountpoint)?;
    let mut step = StepMount {
        mountpoint: mountpoint.to_path_buf(),
        excluded: excluded.to_vec(),
        shared: shared.clone(),
        server: None,
        server_done: None,
        mounted: true,
    };
    let mut config = fuser::Config::default();
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let session = fuser::Session::from_fd(fs::Fs::new(shared.clone()), dev, fuser::SessionACL::All, config)
        .map_err(|e| Unavailable(format!("FUSE handshake on {}: {e}", mountpoint.display())))?;
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let server = std::thread::Builder::new()
        .name("strata-fuse".into())
        .spawn(move || {
            let _done = done_tx;
            let result = session.run();
            if let Err(e) = &result
                && !shared.stopping.load(Ordering::Acquire)
            {
                // The session is over: whatever is still mounted must not hang.
                shared.fail(format!("FUSE server stopped: {e}"));
                shared.abort();
            }
            result
        })
        .map_err(|e| Unavailable(format!("starting the FUSE server: {e}")))?;
    step.server = Some(server);
    step.server_done = Some(done_rx);
    // The connection id is the mount's device number: it names the fusectl
    // directory used to abort a connection whose server failed.
    if let Ok(meta) = std::fs::metadata(mountpoint) {
        use std::os::unix::fs::MetadataExt;
        step.shared.conn.store(meta.dev(), Ordering::Release);
    }
    Ok(step)
}

impl StepMount {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn stats(&self) -> Stats {
        let j = self.shared.journal();
        Stats {
            passthrough: self.shared.passthrough.load(Ordering::Relaxed),
            writeback_cache: self.shared.writeback.load(Ordering::Relaxed),
            journaled_paths: j.paths.len(),
            journaled_inodes: j.inodes.len(),
        }
    }

    /// Flushes what the kernel still caches, unmounts, stops the server and
    /// returns what the step changed. Fails if the server failed during the step.
    pub fn finish(mut self) -> io::Result<ChangeSet> {
        // Cached writes and shared-mmap stores reach the server (and the
        // journal) only when written back: force that first.
        if let Ok(dir) = std::fs::File::open(&self.mountpoint) {
            unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) };
        }
        self.stop()?;
        if let Some(why) = self.shared.failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(io::Error::other(format!("FUSE journal on {}: {why}", self.mountpoint.display())));
        }
        let journal = std::mem::take(&mut *self.shared.journal());
        finish::changeset(self.shared.root.as_fd(), journal, &self.excluded)
    }

    /// Unmounts and waits (briefly) for the server threads to end.
    fn stop(&mut self) -> io::Result<()> {
        if !std::mem::replace(&mut self.mounted, false) {
            return Ok(());
        }
        self.shared.stopping.store(true, Ordering::Release);
        if mount::unmount(&self.mountpoint)? {
            tracing::debug!("{} stayed busy after the step: its FUSE connection was aborted", self.mountpoint.display());
        }
        if let Some(server) = self.server.take() {
            // Disconnected (never a message) when the server thread ends.
            let ended = match self.server_done.take() {
                Some(done) => matches!(
                    done.recv_timeout(Duration::from_secs(10)),
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected)
                ),
                None => true,
            };
            if ended {
                // An error ending the session was recorded by the server
                // thread if it came before `stopping`, and is harmless after.
                if server.join().is_err() {
                    self.shared.fail("the FUSE server panicked".into());
                }
            } else {
                self.shared.fail("the FUSE server did not stop after unmount".into());
            }
        }
        Ok(())
    }
}

impl Drop for StepMount {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!("{e}");
        }
    }
}
