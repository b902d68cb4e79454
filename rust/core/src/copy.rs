//! Moving bytes into a temp file: chunked `pwrite` of a contiguous source, chunked `pread`
//! into a destination buffer, and file-to-file range copies.
//!
//! A range copy reflinks (`FICLONERANGE`) the block-aligned part when both offsets are
//! block-aligned, then uses `copy_file_range`, then a bounded bounce buffer (at most the chunk
//! budget and at most [`MAX_BOUNCE_BYTES`]). Nothing here ever holds a full extra copy of the
//! data. Between chunks a caller-supplied callback runs; it may stop the copy.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use rustix::io::Errno;

use crate::error::{Error, Op, Result, to_u64, to_usize};
use crate::fs::Fs;

/// Upper bound of a bounce buffer: bandwidth saturates at a few MiB per call, so a larger
/// buffer would only cost RAM.
pub const MAX_BOUNCE_BYTES: usize = 64 << 20;

/// Piece size for copies whose caller gives no budget: large enough to saturate the disk,
/// small enough that the between-chunks callback (Ctrl-C) runs promptly.
pub const DEFAULT_CHUNK_BYTES: u64 = 64 << 20;

/// Fallback block size when `st_blksize` is not reported.
const DEFAULT_BLOCK: u64 = 4096;

/// The per-call byte budget: the largest piece moved between two callback invocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkBudget(usize);

impl ChunkBudget {
    /// A budget of `bytes` (at least one byte; clamped to the address space).
    pub fn new(bytes: u64) -> Self {
        Self(usize::try_from(bytes).unwrap_or(usize::MAX).max(1))
    }

    /// The budget in bytes.
    pub fn bytes(self) -> usize {
        self.0
    }

    /// The bounce-buffer size for copying `len` bytes: at most the budget, 64 MiB and `len`.
    pub fn bounce_len(self, len: u64) -> usize {
        let cap = self.0.min(MAX_BOUNCE_BYTES);
        usize::try_from(len).map_or(cap, |len| cap.min(len))
    }

    /// How many pieces `len` bytes take under this budget.
    pub fn pieces(self, len: u64) -> u64 {
        len.div_ceil(to_u64(self.0))
    }
}

/// A callback run between chunks; returning an error stops the copy.
pub type Between<'a> = &'a mut dyn FnMut() -> Result<()>;

/// Runs between chunks but never before the first one.
fn between_chunks(first: &mut bool, between: &mut dyn FnMut() -> Result<()>) -> Result<()> {
    if *first {
        *first = false;
        Ok(())
    } else {
        between()
    }
}

/// Writes all of `data` at `offset`, looping on short writes and retrying EINTR.
///
/// # Errors
/// [`Error::Io`] with [`Op::Write`].
pub fn write_all_at(fs: &dyn Fs, fd: BorrowedFd<'_>, path: &Path, mut data: &[u8], mut offset: u64) -> Result<()> {
    while !data.is_empty() {
        match fs.pwrite(fd, data, offset) {
            Ok(0) => return Err(Error::io(Op::Write, path, io::Error::from(Errno::NOSPC))),
            Ok(n) => {
                data = data.get(n..).unwrap_or_default();
                offset = crate::error::add(offset, to_u64(n))?;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(Error::io(Op::Write, path, err)),
        }
    }
    Ok(())
}

/// Writes `data` at `offset` in pieces of at most `budget` bytes, calling `between` between
/// pieces.
///
/// # Errors
/// [`Error::Io`] with [`Op::Write`], or whatever `between` returns.
pub fn write_chunked(
    fs: &dyn Fs,
    fd: BorrowedFd<'_>,
    path: &Path,
    data: &[u8],
    offset: u64,
    budget: ChunkBudget,
    between: Between<'_>,
) -> Result<()> {
    let mut first = true;
    let mut at = offset;
    for piece in data.chunks(budget.bytes()) {
        between_chunks(&mut first, between)?;
        write_all_at(fs, fd, path, piece, at)?;
        at = crate::error::add(at, to_u64(piece.len()))?;
    }
    Ok(())
}

/// Fills all of `dest` from `offset`, retrying EINTR; end of file first is a size mismatch.
///
/// # Errors
/// [`Error::Io`] with [`Op::Read`], [`Error::SizeMismatch`] if the file ends early.
pub fn read_exact_at(fs: &dyn Fs, fd: BorrowedFd<'_>, path: &Path, dest: &mut [u8], offset: u64) -> Result<()> {
    let wanted = crate::error::add(offset, to_u64(dest.len()))?;
    let mut done = 0usize;
    while done < dest.len() {
        let at = crate::error::add(offset, to_u64(done))?;
        let rest = dest.get_mut(done..).unwrap_or_default();
        match fs.pread(fd, rest, at) {
            Ok(0) => {
                return Err(Error::SizeMismatch {
                    path: path.into(),
                    expected: wanted,
                    actual: at,
                });
            }
            Ok(n) => done += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(Error::io(Op::Read, path, err)),
        }
    }
    Ok(())
}

/// Fills `dest` from `offset` in pieces of at most `budget` bytes, calling `between` between
/// pieces.
///
/// # Errors
/// As [`read_exact_at`], or whatever `between` returns.
pub fn read_chunked(
    fs: &dyn Fs,
    fd: BorrowedFd<'_>,
    path: &Path,
    dest: &mut [u8],
    offset: u64,
    budget: ChunkBudget,
    between: Between<'_>,
) -> Result<()> {
    let mut first = true;
    let mut at = offset;
    for piece in dest.chunks_mut(budget.bytes()) {
        between_chunks(&mut first, between)?;
        read_exact_at(fs, fd, path, piece, at)?;
        at = crate::error::add(at, to_u64(piece.len()))?;
    }
    Ok(())
}

/// One end of a range copy.
#[derive(Debug, Clone, Copy)]
pub struct RangeEnd<'a> {
    /// The open file.
    pub fd: BorrowedFd<'a>,
    /// Its path, for errors.
    pub path: &'a Path,
    /// Where the range starts.
    pub offset: u64,
}

fn is_unsupported(err: &io::Error) -> bool {
    [Errno::OPNOTSUPP, Errno::XDEV, Errno::INVAL, Errno::NOTTY, Errno::NOSYS]
        .iter()
        .any(|errno| err.raw_os_error() == Some(errno.raw_os_error()))
}

/// Copies `len` bytes from `src` to `dst`: reflink, then `copy_file_range`, then bounce buffer.
///
/// # Errors
/// [`Error::Io`] with [`Op::Stat`] (the source's block size), [`Op::Copy`] (or [`Op::Read`] /
/// [`Op::Write`] on the bounce path), [`Error::SizeMismatch`] if the source ends early, or
/// whatever `between` returns. EOPNOTSUPP, EXDEV, EINVAL, ENOTTY and ENOSYS from a reflink or
/// `copy_file_range` are not errors: the next mechanism takes over.
pub fn copy_range(
    fs: &dyn Fs,
    src: RangeEnd<'_>,
    dst: RangeEnd<'_>,
    len: u64,
    budget: ChunkBudget,
    between: Between<'_>,
) -> Result<()> {
    let mut done = clone_aligned_prefix(fs, src, dst, len)?;
    let mut first = done == 0;
    let mut kernel_copy = true;
    let mut bounce: Vec<u8> = Vec::new();
    while done < len {
        between_chunks(&mut first, between)?;
        let src_at = crate::error::add(src.offset, done)?;
        let dst_at = crate::error::add(dst.offset, done)?;
        let want = budget.bytes().min(to_usize(len - done).unwrap_or(usize::MAX));
        if kernel_copy {
            match fs.copy_file_range(src.fd, src_at, dst.fd, dst_at, want) {
                Ok(0) => {
                    let end = crate::error::add(src.offset, len)?;
                    return Err(Error::SizeMismatch {
                        path: src.path.into(),
                        expected: end,
                        actual: src_at,
                    });
                }
                Ok(n) => done = crate::error::add(done, to_u64(n))?,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if is_unsupported(&err) => kernel_copy = false,
                Err(err) => return Err(Error::io(Op::Copy, dst.path, err)),
            }
        } else {
            if bounce.is_empty() {
                bounce = vec![0; budget.bounce_len(len)];
            }
            let take = want.min(bounce.len());
            let piece = bounce.get_mut(..take).unwrap_or_default();
            read_exact_at(fs, src.fd, src.path, piece, src_at)?;
            write_all_at(fs, dst.fd, dst.path, piece, dst_at)?;
            done = crate::error::add(done, to_u64(piece.len()))?;
        }
    }
    Ok(())
}

/// Reflinks the block-aligned prefix of the range when both offsets are block-aligned;
/// returns how many bytes are now shared (0 when the filesystem cannot clone).
fn clone_aligned_prefix(fs: &dyn Fs, src: RangeEnd<'_>, dst: RangeEnd<'_>, len: u64) -> Result<u64> {
    let block = match fs.fstat(src.fd) {
        Ok(stat) if stat.blksize > 0 => stat.blksize,
        Ok(_) => DEFAULT_BLOCK,
        Err(err) => return Err(Error::io(Op::Stat, src.path, err)),
    };
    let aligned = len - len % block;
    if aligned == 0 || src.offset % block != 0 || dst.offset % block != 0 {
        return Ok(0);
    }
    match fs.clone_range(src.fd, src.offset, dst.fd, dst.offset, aligned) {
        Ok(()) => Ok(aligned),
        Err(err) if is_unsupported(&err) => Ok(0),
        Err(err) => Err(Error::io(Op::Copy, dst.path, err)),
    }
}

#[repr(C)]
#[derive(Debug)]
struct FileCloneRange {
    src_fd: i64,
    src_offset: u64,
    src_length: u64,
    dest_offset: u64,
}

/// `_IOW(0x94, 13, struct file_clone_range)` from `linux/fs.h`.
const FICLONERANGE: rustix::ioctl::Opcode = rustix::ioctl::opcode::write::<FileCloneRange>(0x94, 13);

/// `ioctl(dst, FICLONERANGE, {src, src_offset, len, dst_offset})`.
#[allow(unsafe_code)]
pub(crate) fn ficlonerange(
    src: BorrowedFd<'_>,
    src_offset: u64,
    dst: BorrowedFd<'_>,
    dst_offset: u64,
    len: u64,
) -> rustix::io::Result<()> {
    let arg = FileCloneRange {
        src_fd: i64::from(src.as_raw_fd()),
        src_offset,
        src_length: len,
        dest_offset: dst_offset,
    };
    // SAFETY: FICLONERANGE is a write-direction ioctl whose argument is exactly
    // `struct file_clone_range` (four 64-bit fields, laid out by #[repr(C)] as the kernel
    // declares them); the kernel only reads it. Both descriptors are borrowed for the call.
    unsafe { rustix::ioctl::ioctl(dst, rustix::ioctl::Setter::<FICLONERANGE, FileCloneRange>::new(arg)) }
}
