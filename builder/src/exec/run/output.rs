//! Streams a RUN's combined stdout and stderr live, one line at a time, each
//! prefixed with the step's label. Stops at end of file, or shortly after the
//! step has ended when a stray process still holds the pipe open.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use super::OutputSink;

/// The reading side of a step's output pipe, on its own thread.
pub(crate) struct Streamer {
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Streamer {
    pub fn start(pipe: OwnedFd, label: String, sink: Option<OutputSink>) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let thread = std::thread::spawn(move || pump(pipe, &label, sink.as_ref(), &flag));
        Streamer {
            done,
            thread: Some(thread),
        }
    }

    /// Waits for the output to drain, after the step's process has ended.
    pub fn finish(mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn emit(label: &str, line: &[u8], sink: Option<&OutputSink>) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\n', '\r']);
    let line = format!("{label} {text}\n");
    match sink {
        Some(s) => {
            if let Ok(mut w) = s.lock() {
                let _ = w.write_all(line.as_bytes());
                let _ = w.flush();
            }
        }
        None => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
    }
}

fn pump(pipe: OwnedFd, label: &str, sink: Option<&OutputSink>, done: &AtomicBool) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 16384];
    // After the step ended, wait this many empty polls for stragglers.
    let mut grace = 20;
    loop {
        let mut pfd = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, 100) };
        if r == 0 {
            if done.load(Ordering::SeqCst) {
                grace -= 1;
                if grace == 0 {
                    break;
                }
            }
            continue;
        }
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        // SAFETY: read into our buffer.
        let n = unsafe { libc::read(pipe.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n as usize]);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            emit(label, &line, sink);
        }
    }
    if !pending.is_empty() {
        emit(label, &pending, sink);
    }
}
