//! Moving bytes: the chunk budget, chunked `pwrite` of a contiguous source, chunked `pread`
//! into a destination buffer, and copies between two open files.
//!
//! [`ChunkBudget`] turns the one number the caller decides (the byte budget of an operation)
//! into every size derived from it: the piece moved per system call and the size of any bounce
//! buffer. A copy between files reflinks (`FICLONERANGE`) the block-aligned part when both
//! offsets are block-aligned, then uses `copy_file_range`, then a bounce buffer. Nothing here
//! ever holds a full extra copy of the data. Between pieces a caller-supplied callback runs; it
//! may stop the copy.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use rustix::io::Errno;

use crate::checked::{add, to_u64, to_usize};
use crate::error::{Error, Op, Result};
use crate::fs::Fs;

/// Upper bound of a bounce buffer, whatever the budget: `pwrite` bandwidth saturates at a few
/// MiB per call, and a buffer that is still in the CPU cache when the kernel copies it out
/// writes faster than a larger one, so more would only cost RAM.
pub const BOUNCE_BUFFER_CAP: usize = 4 << 20;

/// Upper bound of one piece, whatever the budget: the between-pieces callback (signals, progress)
/// then runs at least every 64 MiB, about ten times a second at page-cache bandwidth, and a
/// larger `pwrite` or `copy_file_range` moves no faster.
pub const PIECE_CAP: usize = 64 << 20;

/// Fallback block size when `st_blksize` is not reported.
const DEFAULT_BLOCK: u64 = 4096;

/// The chunk budget of one operation: the most bytes moved by one system call between two
/// callback invocations, and the bound of any transient buffer. The caller decides the number
/// (Python: 10 % of available memory); every size derived from it is derived here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkBudget(usize);

impl ChunkBudget {
    /// A budget of `bytes`, clamped to the address space. The only zero-guard: a budget of
    /// zero bytes is one byte, so every piece makes progress.
    pub fn new(bytes: u64) -> Self {
        Self(usize::try_from(bytes).unwrap_or(usize::MAX).max(1))
    }

    /// The budget in bytes.
    pub fn bytes(self) -> usize {
        self.0
    }

    /// The piece one `pwrite`, `pread` or `copy_file_range` moves from a source already in
    /// memory or in a file: the budget, at most [`PIECE_CAP`].
    pub fn piece_len(self) -> usize {
        self.0.min(PIECE_CAP)
    }

    /// The size of a bounce buffer for moving `len` bytes through user space (a gathered
    /// strided source, or a file copy the kernel cannot do): at most the budget,
    /// [`BOUNCE_BUFFER_CAP`] and `len`.
    pub fn bounce_len(self, len: u64) -> usize {
        let cap = self.0.min(BOUNCE_BUFFER_CAP);
        usize::try_from(len).map_or(cap, |len| cap.min(len))
    }

    /// How many pieces `len` bytes take under this budget.
    pub fn pieces(self, len: u64) -> u64 {
        len.div_ceil(to_u64(self.piece_len()))
    }
}

/// A callback run between chunks with the number of bytes moved since its previous call (or
/// since the operation began); returning an error stops the copy. It never runs after the last
/// chunk: the caller knows the total and accounts for the rest itself.
pub type Between<'a> = &'a mut dyn FnMut(u64) -> Result<()>;

/// Runs `between` with the `moved` bytes of the previous chunk, but never before the first one.
pub(crate) fn between_chunks(first: &mut bool, between: Between<'_>, moved: u64) -> Result<()> {
    if *first {
        *first = false;
        Ok(())
    } else {
        between(moved)
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
                offset = add(offset, to_u64(n))?;
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
    let mut moved = 0;
    for piece in data.chunks(budget.piece_len()) {
        between_chunks(&mut first, between, moved)?;
        write_all_at(fs, fd, path, piece, at)?;
        moved = to_u64(piece.len());
        at = add(at, moved)?;
    }
    Ok(())
}

/// Fills all of `dest` from `offset`, retrying EINTR; end of file first is a size mismatch.
///
/// # Errors
/// [`Error::Io`] with [`Op::Read`], [`Error::SizeMismatch`] if the file ends early.
pub fn read_exact_at(fs: &dyn Fs, fd: BorrowedFd<'_>, path: &Path, dest: &mut [u8], offset: u64) -> Result<()> {
    let wanted = add(offset, to_u64(dest.len()))?;
    let mut done = 0usize;
    while done < dest.len() {
        let at = add(offset, to_u64(done))?;
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
    let mut moved = 0;
    for piece in dest.chunks_mut(budget.piece_len()) {
        between_chunks(&mut first, between, moved)?;
        read_exact_at(fs, fd, path, piece, at)?;
        moved = to_u64(piece.len());
        at = add(at, moved)?;
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

/// Copies `len` bytes between two open files, `src` to `dst`: reflink, then
/// `copy_file_range`, then a bounce buffer of [`ChunkBudget::bounce_len`] bytes.
///
/// # Errors
/// [`Error::Io`] with [`Op::Stat`] (the source's block size), [`Op::Copy`] (or [`Op::Read`] /
/// [`Op::Write`] on the bounce path), [`Error::SizeMismatch`] if the source ends early, or
/// whatever `between` returns. EOPNOTSUPP, EXDEV, EINVAL, ENOTTY and ENOSYS from a reflink or
/// `copy_file_range` are not errors: the next mechanism takes over.
pub fn copy_between(
    fs: &dyn Fs,
    src: RangeEnd<'_>,
    dst: RangeEnd<'_>,
    len: u64,
    budget: ChunkBudget,
    between: Between<'_>,
) -> Result<()> {
    let mut done = clone_aligned_prefix(fs, src, dst, len)?;
    let mut first = done == 0;
    let mut moved = done;
    let mut kernel_copy = true;
    let mut bounce: Vec<u8> = Vec::new();
    while done < len {
        between_chunks(&mut first, between, moved)?;
        moved = 0;
        let src_at = add(src.offset, done)?;
        let dst_at = add(dst.offset, done)?;
        let want = budget.piece_len().min(to_usize(len - done).unwrap_or(usize::MAX));
        if kernel_copy {
            match fs.copy_file_range(src.fd, src_at, dst.fd, dst_at, want) {
                Ok(0) => {
                    let end = add(src.offset, len)?;
                    return Err(Error::SizeMismatch {
                        path: src.path.into(),
                        expected: end,
                        actual: src_at,
                    });
                }
                Ok(n) => {
                    moved = to_u64(n);
                    done = add(done, moved)?;
                }
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
            moved = to_u64(piece.len());
            done = add(done, moved)?;
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

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::VecDeque;
    use std::fs::File;
    use std::os::fd::{AsFd, OwnedFd};
    use std::path::PathBuf;
    use std::sync::Mutex;

    use rustix::fs::OFlags;

    use super::*;
    use crate::fs::{CopyPath, CopyPathFs, FileStat, RealFs};

    #[test]
    fn chunk_budget_splits_a_length_into_ceil_pieces() {
        let budget = ChunkBudget::new(10);
        let cases = [
            (1, 1),
            (9, 1),
            (10, 1),
            (11, 2),
            (20, 2),
            (21, 3),
            (1000, 100),
            (1001, 101),
        ];
        for (len, pieces) in cases {
            assert_eq!(budget.pieces(len), pieces, "len {len}");
        }
    }

    #[test]
    fn chunk_budget_of_zero_length_is_zero_pieces() {
        for bytes in [1, 7, 64 << 20, u64::MAX] {
            assert_eq!(ChunkBudget::new(bytes).pieces(0), 0, "budget {bytes}");
        }
    }

    #[test]
    fn chunk_budget_of_zero_bytes_is_clamped_to_one() {
        assert_eq!(ChunkBudget::new(0).bytes(), 1);
        assert_eq!(ChunkBudget::new(0), ChunkBudget::new(1));
    }

    #[test]
    fn chunk_budget_of_one_byte_moves_one_byte_per_piece() {
        let budget = ChunkBudget::new(1);
        assert_eq!(budget.pieces(1), 1);
        assert_eq!(budget.pieces(4097), 4097);
        assert_eq!(budget.pieces(u64::MAX), u64::MAX);
        assert_eq!(budget.bounce_len(u64::MAX), 1);
    }

    #[test]
    fn chunk_budget_handles_huge_lengths_without_overflow() {
        let huge = ChunkBudget::new(u64::MAX);
        assert_eq!(huge.bytes(), usize::MAX);
        assert_eq!(huge.pieces(u64::MAX), u64::MAX / to_u64(PIECE_CAP) + 1);
        assert_eq!(huge.pieces(1), 1);
        let page = ChunkBudget::new(4096);
        assert_eq!(page.pieces(u64::MAX), u64::MAX / 4096 + 1);
        assert_eq!(page.pieces(u64::MAX - u64::MAX % 4096), u64::MAX / 4096);
    }

    #[test]
    fn bounce_len_is_capped_by_the_budget_the_length_and_the_bounce_cap() {
        let max = to_u64(BOUNCE_BUFFER_CAP);
        let cases = [
            (4096, 100, 100),
            (4096, 4096, 4096),
            (4096, 1 << 30, 4096),
            (u64::MAX, 10, 10),
            (u64::MAX, u64::MAX, BOUNCE_BUFFER_CAP),
            (max + 1, max + 1, BOUNCE_BUFFER_CAP),
            (max, 1 << 40, BOUNCE_BUFFER_CAP),
            (max - 1, 1 << 40, BOUNCE_BUFFER_CAP - 1),
            (1, 0, 0),
        ];
        for (budget, len, expected) in cases {
            assert_eq!(
                ChunkBudget::new(budget).bounce_len(len),
                expected,
                "budget {budget}, len {len}"
            );
        }
    }

    /// An in-memory file behind the seam: each `pwrite`/`pread` moves at most `max_io` bytes
    /// and the next scripted outcome (`Some(errno)`) fails a call before it moves anything.
    /// Everything else is unsupported. [`ChoppyFs::fd`] is a stand-in descriptor that is never
    /// touched.
    #[derive(Debug)]
    struct ChoppyFs {
        stand_in: File,
        data: Mutex<Vec<u8>>,
        max_io: usize,
        script: Mutex<VecDeque<Option<i32>>>,
        calls: Mutex<Vec<(u64, usize)>>,
    }

    impl ChoppyFs {
        fn new(data: &[u8], max_io: usize, script: &[Option<i32>]) -> Self {
            Self {
                stand_in: File::open("/dev/null").unwrap(),
                data: Mutex::new(data.to_vec()),
                max_io,
                script: Mutex::new(script.iter().copied().collect()),
                calls: Mutex::new(Vec::new()),
            }
        }

        fn fd(&self) -> BorrowedFd<'_> {
            self.stand_in.as_fd()
        }

        fn data(&self) -> Vec<u8> {
            self.data.lock().unwrap().clone()
        }

        /// `(offset, requested length)` of every read or write call, failed ones included.
        fn calls(&self) -> Vec<(u64, usize)> {
            self.calls.lock().unwrap().clone()
        }

        fn next(&self, offset: u64, len: usize) -> io::Result<()> {
            self.calls.lock().unwrap().push((offset, len));
            match self.script.lock().unwrap().pop_front().flatten() {
                Some(errno) => Err(io::Error::from_raw_os_error(errno)),
                None => Ok(()),
            }
        }
    }

    fn unsupported<T>() -> io::Result<T> {
        Err(io::Error::from(Errno::NOSYS))
    }

    impl Fs for ChoppyFs {
        fn open(&self, _: BorrowedFd<'_>, _: &str, _: OFlags, _: u32) -> io::Result<OwnedFd> {
            unsupported()
        }
        fn mkdir(&self, _: BorrowedFd<'_>, _: &str, _: u32) -> io::Result<()> {
            unsupported()
        }
        fn fallocate(&self, _: BorrowedFd<'_>, _: u64) -> io::Result<()> {
            unsupported()
        }
        fn truncate(&self, _: BorrowedFd<'_>, _: u64) -> io::Result<()> {
            unsupported()
        }
        fn pwrite(&self, _: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<usize> {
            self.next(offset, buf.len())?;
            let n = buf.len().min(self.max_io);
            let start = usize::try_from(offset).unwrap();
            let mut data = self.data.lock().unwrap();
            if data.len() < start + n {
                data.resize(start + n, 0);
            }
            data[start..start + n].copy_from_slice(&buf[..n]);
            Ok(n)
        }
        fn pread(&self, _: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            self.next(offset, buf.len())?;
            let data = self.data.lock().unwrap();
            let start = usize::try_from(offset).unwrap().min(data.len());
            let n = buf.len().min(self.max_io).min(data.len() - start);
            buf[..n].copy_from_slice(&data[start..start + n]);
            Ok(n)
        }
        fn fsync(&self, _: BorrowedFd<'_>) -> io::Result<()> {
            unsupported()
        }
        fn start_writeback(&self, _: BorrowedFd<'_>, _: u64, _: u64) -> io::Result<()> {
            unsupported()
        }
        fn fsync_dir(&self, _: BorrowedFd<'_>) -> io::Result<()> {
            unsupported()
        }
        fn rename(&self, _: BorrowedFd<'_>, _: &str, _: &str) -> io::Result<()> {
            unsupported()
        }
        fn unlink(&self, _: BorrowedFd<'_>, _: &str) -> io::Result<()> {
            unsupported()
        }
        fn fstat(&self, _: BorrowedFd<'_>) -> io::Result<FileStat> {
            unsupported()
        }
        fn stat_nofollow(&self, _: BorrowedFd<'_>, _: &str) -> io::Result<FileStat> {
            unsupported()
        }
        fn lock_exclusive(&self, _: BorrowedFd<'_>, _: bool) -> io::Result<()> {
            unsupported()
        }
        fn lock_shared(&self, _: BorrowedFd<'_>) -> io::Result<()> {
            unsupported()
        }
        fn fchmod(&self, _: BorrowedFd<'_>, _: u32) -> io::Result<()> {
            unsupported()
        }
        fn copy_file_range(&self, _: BorrowedFd<'_>, _: u64, _: BorrowedFd<'_>, _: u64, _: usize) -> io::Result<usize> {
            unsupported()
        }
        fn clone_range(&self, _: BorrowedFd<'_>, _: u64, _: BorrowedFd<'_>, _: u64, _: u64) -> io::Result<()> {
            unsupported()
        }
        fn list(&self, _: BorrowedFd<'_>) -> io::Result<Vec<String>> {
            unsupported()
        }
        fn refuses_writes(&self, _: BorrowedFd<'_>) -> io::Result<bool> {
            unsupported()
        }
        fn map_gate(&self, _: &Path) -> io::Result<()> {
            unsupported()
        }
    }

    const EINTR: Option<i32> = Some(Errno::INTR.raw_os_error());
    const EIO: Option<i32> = Some(Errno::IO.raw_os_error());

    fn path() -> PathBuf {
        PathBuf::from("/cache/k.dat.tmp")
    }

    #[test]
    fn write_all_at_loops_on_short_writes_until_everything_is_written() {
        let fs = ChoppyFs::new(b"head:", 3, &[]);

        write_all_at(&fs, fs.fd(), &path(), b"0123456789", 5).unwrap();

        assert_eq!(fs.data(), b"head:0123456789");
        assert_eq!(fs.calls(), [(5, 10), (8, 7), (11, 4), (14, 1)]);
    }

    #[test]
    fn write_all_at_retries_eintr_at_the_same_offset() {
        let fs = ChoppyFs::new(b"", 4, &[EINTR, None, EINTR, EINTR]);

        write_all_at(&fs, fs.fd(), &path(), b"abcdefgh", 0).unwrap();

        assert_eq!(fs.data(), b"abcdefgh");
        assert_eq!(fs.calls(), [(0, 8), (0, 8), (4, 4), (4, 4), (4, 4)]);
    }

    #[test]
    fn write_all_at_of_nothing_makes_no_call() {
        let fs = ChoppyFs::new(b"", 4, &[EIO]);

        write_all_at(&fs, fs.fd(), &path(), b"", 7).unwrap();

        assert!(fs.calls().is_empty());
    }

    fn assert_io(err: &Error, expected_op: Op, errno: Errno) {
        match err {
            Error::Io { op, path: at, source } => {
                assert_eq!(*op, expected_op);
                assert_eq!(at, &path());
                assert_eq!(source.raw_os_error(), Some(errno.raw_os_error()));
            }
            other => panic!("expected Error::Io, got {other:?}"),
        }
    }

    #[test]
    fn write_all_at_surfaces_other_errors_with_the_path_without_retrying() {
        let fs = ChoppyFs::new(b"", 4, &[None, EIO]);

        let err = write_all_at(&fs, fs.fd(), &path(), b"abcdefgh", 0).unwrap_err();

        assert_io(&err, Op::Write, Errno::IO);
        assert_eq!(fs.calls().len(), 2);
        assert_eq!(fs.data(), b"abcd");
    }

    #[test]
    fn write_all_at_turns_a_zero_byte_write_into_enospc() {
        let fs = ChoppyFs::new(b"", 0, &[]);

        let err = write_all_at(&fs, fs.fd(), &path(), b"abc", 0).unwrap_err();

        assert_io(&err, Op::Write, Errno::NOSPC);
        assert_eq!(fs.calls().len(), 1);
    }

    #[test]
    fn read_exact_at_loops_on_short_reads_and_retries_eintr() {
        let fs = ChoppyFs::new(b"0123456789", 3, &[None, EINTR]);
        let mut dest = [0u8; 7];

        read_exact_at(&fs, fs.fd(), &path(), &mut dest, 2).unwrap();

        assert_eq!(&dest, b"2345678");
        assert_eq!(fs.calls(), [(2, 7), (5, 4), (5, 4), (8, 1)]);
    }

    #[test]
    fn read_exact_at_surfaces_read_errors_with_the_path() {
        let fs = ChoppyFs::new(b"0123456789", 3, &[EIO]);
        let mut dest = [0u8; 4];

        let err = read_exact_at(&fs, fs.fd(), &path(), &mut dest, 0).unwrap_err();

        assert_io(&err, Op::Read, Errno::IO);
    }

    fn short_file(content: &[u8]) -> (tempfile::TempDir, File, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("short.dat");
        std::fs::write(&path, content).unwrap();
        let file = File::open(&path).unwrap();
        (tmp, file, path)
    }

    #[test]
    fn read_exact_at_on_a_short_file_is_a_size_mismatch_at_its_end() {
        let (_tmp, file, path) = short_file(b"0123456789");
        let mut dest = [0u8; 8];

        let err = read_exact_at(&RealFs, file.as_fd(), &path, &mut dest, 5).unwrap_err();

        match err {
            Error::SizeMismatch {
                path: at,
                expected,
                actual,
            } => {
                assert_eq!(at, path);
                assert_eq!((expected, actual), (13, 10));
            }
            other => panic!("expected SizeMismatch, got {other:?}"),
        }
    }

    #[test]
    fn read_exact_at_past_the_end_reports_the_offset_as_found() {
        let (_tmp, file, path) = short_file(b"0123");
        let mut dest = [0u8; 2];

        let err = read_exact_at(&RealFs, file.as_fd(), &path, &mut dest, 100).unwrap_err();

        assert!(
            matches!(
                err,
                Error::SizeMismatch {
                    expected: 102,
                    actual: 100,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn chunked_write_calls_between_only_between_pieces() {
        let fs = ChoppyFs::new(b"", usize::MAX, &[]);
        let mut between_calls = Vec::new();
        let mut between = |moved| {
            between_calls.push((fs.data().len(), moved));
            Ok(())
        };

        write_chunked(
            &fs,
            fs.fd(),
            &path(),
            b"0123456789",
            0,
            ChunkBudget::new(4),
            &mut between,
        )
        .unwrap();

        assert_eq!(
            between_calls,
            [(4, 4), (8, 4)],
            "(written so far, moved since the last call)"
        );
        assert_eq!(fs.data(), b"0123456789");
        assert_eq!(fs.calls(), [(0, 4), (4, 4), (8, 2)]);
    }

    #[test]
    fn chunked_write_stops_when_between_fails() {
        let fs = ChoppyFs::new(b"", usize::MAX, &[]);
        let mut seen = 0;
        let mut between = |_| {
            seen += 1;
            Err(Error::Interrupted)
        };

        let err = write_chunked(
            &fs,
            fs.fd(),
            &path(),
            b"0123456789",
            0,
            ChunkBudget::new(4),
            &mut between,
        )
        .unwrap_err();

        assert!(matches!(err, Error::Interrupted));
        assert_eq!(seen, 1);
        assert_eq!(fs.data(), b"0123");
    }

    #[test]
    fn chunked_write_of_one_piece_never_calls_between() {
        let fs = ChoppyFs::new(b"", usize::MAX, &[]);
        let mut between = |_| -> Result<()> { panic!("between ran for a single piece") };

        write_chunked(&fs, fs.fd(), &path(), b"0123", 0, ChunkBudget::new(4), &mut between).unwrap();
        write_chunked(&fs, fs.fd(), &path(), b"", 0, ChunkBudget::new(4), &mut between).unwrap();

        assert_eq!(fs.data(), b"0123");
    }

    #[test]
    fn chunked_read_fills_the_destination_piece_by_piece() {
        let fs = ChoppyFs::new(b"abcdefghij", usize::MAX, &[]);
        let mut dest = [0u8; 9];
        let mut between_calls = 0;
        let mut between = |_| {
            between_calls += 1;
            Ok(())
        };

        read_chunked(&fs, fs.fd(), &path(), &mut dest, 1, ChunkBudget::new(4), &mut between).unwrap();

        assert_eq!(&dest, b"bcdefghij");
        assert_eq!(between_calls, 2);
        assert_eq!(fs.calls(), [(1, 4), (5, 4), (9, 1)]);
    }

    #[test]
    fn only_capability_errnos_count_as_unsupported() {
        for errno in [Errno::OPNOTSUPP, Errno::XDEV, Errno::INVAL, Errno::NOTTY, Errno::NOSYS] {
            assert!(is_unsupported(&io::Error::from(errno)), "{errno:?}");
        }
        for errno in [Errno::NOSPC, Errno::IO, Errno::BADF, Errno::FBIG, Errno::INTR] {
            assert!(!is_unsupported(&io::Error::from(errno)), "{errno:?}");
        }
        assert!(!is_unsupported(&io::Error::other("no errno")));
    }

    fn copy_short_source(copy_path: CopyPath) -> Error {
        let tmp = tempfile::tempdir().unwrap();
        let src_path = tmp.path().join("src.dat");
        let dst_path = tmp.path().join("dst.dat");
        std::fs::write(&src_path, vec![7u8; 10_000]).unwrap();
        let src = File::open(&src_path).unwrap();
        let dst = File::create(&dst_path).unwrap();
        let fs = CopyPathFs::new(copy_path);
        let from = RangeEnd {
            fd: src.as_fd(),
            path: &src_path,
            offset: 100,
        };
        let to = RangeEnd {
            fd: dst.as_fd(),
            path: &dst_path,
            offset: 0,
        };
        copy_between(&fs, from, to, 20_000, ChunkBudget::new(4096), &mut |_| Ok(())).unwrap_err()
    }

    #[test]
    fn copying_past_the_end_of_the_source_is_a_size_mismatch_on_every_path() {
        for copy_path in [CopyPath::KernelCopy, CopyPath::Bounce] {
            let err = copy_short_source(copy_path);

            match err {
                Error::SizeMismatch { path, actual, .. } => {
                    assert!(path.ends_with("src.dat"), "{copy_path:?}: {}", path.display());
                    assert_eq!(actual, 10_000, "{copy_path:?}");
                }
                other => panic!("{copy_path:?}: expected SizeMismatch, got {other:?}"),
            }
        }
    }
}
