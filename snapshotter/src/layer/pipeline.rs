//! The one pass over a layer's bytes: tar stream → sha256 (diffID) →
//! fixed-size blocks compressed on worker threads → reordered → sha256
//! (digest) → blob file.
//!
//! No thread waits on another in the common case, which matters on a busy
//! machine, where every wake-up costs a trip through the run queue: whoever
//! finishes the next block in order (a worker, or the producer) hashes and
//! writes it and any blocks queued behind it; when the workers' queue is
//! full, the producer compresses the block itself instead of sleeping.
//!
//! Memory is bounded: the producer waits once more than `4 × threads + 4`
//! blocks are between it and the blob file, whatever the layer size.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError, bounded};
use sha2::{Digest, Sha256};

use super::codec::{BlockCompressor, GZIP_HEADER};

/// What the pipeline does with the bytes.
#[derive(Debug, Clone, Copy)]
pub enum Codec {
    Gzip { level: u32 },
    Zstd { level: i32 },
    None,
}

impl Codec {
    fn block_size(self) -> usize {
        match self {
            Codec::Gzip { .. } => 1 << 20,
            Codec::Zstd { .. } => 4 << 20,
            Codec::None => 1 << 20,
        }
    }

    fn compressor(self) -> io::Result<BlockCompressor> {
        match self {
            Codec::Gzip { level } => Ok(BlockCompressor::gzip(level)),
            Codec::Zstd { level } => BlockCompressor::zstd(level),
            Codec::None => Err(io::Error::other("no compressor for an uncompressed layer")),
        }
    }
}

/// Blocks allowed between the producer and the blob file.
fn in_flight(threads: usize) -> usize {
    4 * threads + 4
}

/// What came out: the two digests and the blob's size.
#[derive(Debug)]
pub struct Output {
    pub diff_id: [u8; 32],
    pub digest: [u8; 32],
    pub size: u64,
}

struct Job {
    seq: u64,
    block: Arc<Vec<u8>>,
    previous: Option<Arc<Vec<u8>>>,
    last: bool,
}

impl Job {
    fn run(self, compressor: &mut BlockCompressor, gzip: bool) -> Done {
        let mut crc = crc32fast::Hasher::new();
        if gzip {
            crc.update(&self.block);
        }
        let bytes = compressor.compress(&self.block, self.previous.as_deref().map(Vec::as_slice), self.last);
        Done { seq: self.seq, bytes, crc, len: self.block.len() }
    }
}

struct Done {
    seq: u64,
    bytes: io::Result<Vec<u8>>,
    crc: crc32fast::Hasher,
    len: usize,
}

/// The blob file's side: compressed blocks written in order.
struct Sink {
    out: BufWriter<File>,
    digest: Sha256,
    size: u64,
    crc: crc32fast::Hasher,
    uncompressed: u64,
    /// The next block to write, and blocks done ahead of it.
    next: u64,
    pending: BTreeMap<u64, Done>,
    /// The first error; later blocks are then dropped, not written.
    error: Option<io::Error>,
}

impl Sink {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.digest.update(bytes);
        self.size += bytes.len() as u64;
        self.out.write_all(bytes)
    }
}

struct Shared {
    sink: Mutex<Sink>,
    /// Signalled whenever blocks were written.
    written: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Sink> {
        self.sink.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands in a finished block and writes every block now in order.
    fn deliver(&self, done: Done) {
        let mut sink = self.lock();
        sink.pending.insert(done.seq, done);
        loop {
            let next = sink.next;
            let Some(d) = sink.pending.remove(&next) else { break };
            if sink.error.is_none() {
                let result = d.bytes.and_then(|bytes| sink.put(&bytes));
                match result {
                    Ok(()) => {
                        sink.crc.combine(&d.crc);
                        sink.uncompressed += d.len as u64;
                    }
                    Err(e) => sink.error = Some(e),
                }
            }
            sink.next += 1;
        }
        drop(sink);
        self.written.notify_all();
    }
}

/// A `Write` that runs the whole pass; call `finish` at the end.
pub struct Pipeline {
    codec: Codec,
    threads: usize,
    diff_id: Sha256,
    block_size: usize,
    current: Vec<u8>,
    previous: Option<Arc<Vec<u8>>>,
    seq: u64,
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    shared: Option<Arc<Shared>>,
    /// The producer's own compressor, for when the workers are all busy.
    own: Option<BlockCompressor>,
    /// `Codec::None` writes straight through.
    direct: Option<(BufWriter<File>, u64)>,
}

impl Pipeline {
    pub fn new(codec: Codec, threads: usize, file: File) -> io::Result<Pipeline> {
        let threads = threads.max(1);
        let block_size = codec.block_size();
        let mut pipeline = Pipeline {
            codec,
            threads,
            diff_id: Sha256::new(),
            block_size,
            current: Vec::with_capacity(block_size),
            previous: None,
            seq: 0,
            jobs: None,
            workers: Vec::new(),
            shared: None,
            own: None,
            direct: None,
        };
        if let Codec::None = codec {
            pipeline.direct = Some((BufWriter::with_capacity(1 << 20, file), 0));
            return Ok(pipeline);
        }
        let gzip = matches!(codec, Codec::Gzip { .. });
        let mut sink = Sink {
            out: BufWriter::with_capacity(1 << 20, file),
            digest: Sha256::new(),
            size: 0,
            crc: crc32fast::Hasher::new(),
            uncompressed: 0,
            next: 0,
            pending: BTreeMap::new(),
            error: None,
        };
        if gzip {
            sink.put(&GZIP_HEADER)?;
        }
        let shared = Arc::new(Shared { sink: Mutex::new(sink), written: Condvar::new() });
        let (jobs_tx, jobs_rx) = bounded::<Job>(threads);
        for _ in 0..threads {
            let mut compressor = codec.compressor()?;
            let (jobs_rx, shared) = (jobs_rx.clone(), shared.clone());
            pipeline.workers.push(std::thread::Builder::new().name("strata-compress".into()).spawn(move || {
                for job in jobs_rx {
                    shared.deliver(job.run(&mut compressor, gzip));
                }
            })?);
        }
        pipeline.jobs = Some(jobs_tx);
        pipeline.shared = Some(shared);
        Ok(pipeline)
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        let capacity = if last { 0 } else { self.block_size };
        let block = Arc::new(std::mem::replace(&mut self.current, Vec::with_capacity(capacity)));
        let shared = self.shared.clone().expect("compressed pipelines have a sink");
        {
            // Bounded memory: wait while too many blocks are not on disk yet.
            let mut sink = shared.lock();
            while self.seq - sink.next >= in_flight(self.threads) as u64 && sink.error.is_none() {
                sink = shared.written.wait(sink).unwrap_or_else(PoisonError::into_inner);
            }
            if let Some(e) = &sink.error {
                return Err(io::Error::new(e.kind(), e.to_string()));
            }
        }
        let job = Job { seq: self.seq, block: block.clone(), previous: self.previous.take(), last };
        self.previous = Some(block);
        self.seq += 1;
        match self.jobs.as_ref().expect("jobs open until finish").try_send(job) {
            Ok(()) => Ok(()),
            // Every worker is busy: compress this block here rather than sleep.
            Err(TrySendError::Full(job)) => {
                if self.own.is_none() {
                    self.own = Some(self.codec.compressor()?);
                }
                let gzip = matches!(self.codec, Codec::Gzip { .. });
                let done = job.run(self.own.as_mut().expect("just made"), gzip);
                shared.deliver(done);
                Ok(())
            }
            Err(TrySendError::Disconnected(_)) => Err(io::Error::other("the compression threads stopped")),
        }
    }

    /// Flushes the last block, waits for every thread and returns the digests.
    pub fn finish(mut self) -> io::Result<Output> {
        let diff_id: [u8; 32] = self.diff_id.clone().finalize().into();
        if let Some((mut out, size)) = self.direct.take() {
            out.flush()?;
            out.into_inner().map_err(|e| e.into_error())?;
            return Ok(Output { diff_id, digest: diff_id, size });
        }
        let submitted = self.submit(true);
        self.jobs = None;
        self.previous = None;
        for worker in self.workers.drain(..) {
            worker.join().map_err(|_| io::Error::other("a compression thread panicked"))?;
        }
        submitted?;
        let shared = self.shared.take().expect("compressed pipelines have a sink");
        let mut sink = shared.lock();
        if let Some(e) = sink.error.take() {
            return Err(e);
        }
        if sink.next != self.seq || !sink.pending.is_empty() {
            return Err(io::Error::other("a compressed block went missing"));
        }
        if matches!(self.codec, Codec::Gzip { .. }) {
            let mut trailer = [0u8; 8];
            trailer[..4].copy_from_slice(&sink.crc.clone().finalize().to_le_bytes());
            trailer[4..].copy_from_slice(&(sink.uncompressed as u32).to_le_bytes());
            sink.put(&trailer)?;
        }
        sink.out.flush()?;
        Ok(Output { diff_id, digest: sink.digest.clone().finalize().into(), size: sink.size })
    }
}

impl Write for Pipeline {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.diff_id.update(buf);
        if let Some((out, size)) = &mut self.direct {
            out.write_all(buf)?;
            *size += buf.len() as u64;
            return Ok(buf.len());
        }
        let mut rest = buf;
        while !rest.is_empty() {
            if self.current.len() == self.block_size {
                self.submit(false)?;
            }
            let take = rest.len().min(self.block_size - self.current.len());
            self.current.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // On an error path: close the job queue and let the workers wind down.
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
