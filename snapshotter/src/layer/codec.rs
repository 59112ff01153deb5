//! Block codecs: compress one fixed-size block of the tar stream on its own,
//! so blocks can go to any thread and the output never depends on how many.
//!
//! - gzip: each block is raw deflate primed with the previous block's last
//!   32 KiB (as pigz does), ended by a sync flush; the last block ends the
//!   stream. With one gzip header and a trailer whose CRC-32 is combined from
//!   the blocks' CRCs, the result is one ordinary gzip member. A block whose
//!   samples do not shrink at deflate's fastest level (already compressed
//!   data: archives, images, binaries' compressed sections) is emitted as
//!   stored deflate blocks at once, as deflate would end up doing anyway.
//! - zstd: each block is a complete zstd frame; concatenated frames are a
//!   valid zstd stream.

use std::io;

use flate2::{Compress, FlushCompress, Status};

/// Deflate's window: how much of the previous block primes the next one.
const DICTIONARY: usize = 32 * 1024;

/// The fixed gzip header: no name, mtime 0, OS "unknown", for reproducibility.
pub const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// A compressor for one worker thread, reused from block to block.
pub enum BlockCompressor {
    /// The compressor at the chosen level, and a level-1 one for probing.
    Gzip(Box<(Compress, Compress)>),
    Zstd(Box<zstd::bulk::Compressor<'static>>),
}

impl BlockCompressor {
    pub fn gzip(level: u32) -> BlockCompressor {
        BlockCompressor::Gzip(Box::new((
            Compress::new(flate2::Compression::new(level), false),
            Compress::new(flate2::Compression::new(1), false),
        )))
    }

    pub fn zstd(level: i32) -> io::Result<BlockCompressor> {
        Ok(BlockCompressor::Zstd(Box::new(
            zstd::bulk::Compressor::new(level)?,
        )))
    }

    /// Compresses `block`; `previous` is the block before it (gzip primes
    /// its window with it), `last` says whether the stream ends here.
    pub fn compress(
        &mut self,
        block: &[u8],
        previous: Option<&[u8]>,
        last: bool,
    ) -> io::Result<Vec<u8>> {
        match self {
            BlockCompressor::Gzip(c) => {
                let (deflate, probe) = &mut **c;
                if looks_incompressible(probe, block)? {
                    Ok(stored_blocks(block, last))
                } else {
                    deflate_block(deflate, block, previous, last)
                }
            }
            BlockCompressor::Zstd(c) => c.compress(block),
        }
    }
}

fn deflate_block(
    c: &mut Compress,
    block: &[u8],
    previous: Option<&[u8]>,
    last: bool,
) -> io::Result<Vec<u8>> {
    c.reset();
    if let Some(prev) = previous {
        let dict = &prev[prev.len().saturating_sub(DICTIONARY)..];
        c.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(block.len() + block.len() / 16 + 1024);
    let start = c.total_in();
    loop {
        if out.len() == out.capacity() {
            out.reserve(64 * 1024);
        }
        let consumed = (c.total_in() - start) as usize;
        let status = c
            .compress_vec(&block[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = (c.total_in() - start) as usize == block.len();
        match status {
            Status::StreamEnd => return Ok(out),
            // A sync flush is complete once all input is in and output room was left over.
            Status::Ok | Status::BufError if !last && all_in && out.len() < out.capacity() => {
                return Ok(out);
            }
            Status::Ok | Status::BufError => {}
        }
    }
}

/// Samples probed per block, and their size.
const SAMPLES: usize = 4;
const SAMPLE: usize = 16 * 1024;

/// True when every part of `block` deflate was shown leaves at 97% or more
/// of its size. Depends on the block's bytes only, never on threads.
fn looks_incompressible(probe: &mut Compress, block: &[u8]) -> io::Result<bool> {
    if block.len() < SAMPLES * SAMPLE * 2 {
        return Ok(false);
    }
    let step = (block.len() - SAMPLE) / (SAMPLES - 1);
    let mut out = Vec::with_capacity(SAMPLE + 1024);
    let mut compressed = 0;
    for i in 0..SAMPLES {
        let sample = &block[i * step..i * step + SAMPLE];
        probe.reset();
        out.clear();
        match probe
            .compress_vec(sample, &mut out, FlushCompress::Finish)
            .map_err(io::Error::other)?
        {
            // Output filled up: this sample does not shrink at all.
            Status::Ok | Status::BufError => compressed += SAMPLE + 1,
            Status::StreamEnd => compressed += out.len(),
        }
    }
    Ok(compressed * 100 >= SAMPLES * SAMPLE * 97)
}

/// `block` as stored (uncompressed) deflate blocks. The stream is at a byte
/// boundary here: the previous block ended with a sync flush or was stored.
fn stored_blocks(block: &[u8], last: bool) -> Vec<u8> {
    const MAX: usize = 65535;
    let chunks = block.len().div_ceil(MAX).max(1);
    let mut out = Vec::with_capacity(block.len() + chunks * 5);
    for (i, chunk) in block.chunks(MAX).enumerate() {
        let len = chunk.len() as u16;
        out.push(u8::from(last && i + 1 == chunks));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    if block.is_empty() {
        out.extend_from_slice(&[u8::from(last), 0, 0, 0xff, 0xff]);
    }
    out
}
