//! Replacing one file of a [`CacheDir`] atomically: a payload streamed into a reserved temp
//! (from a contiguous buffer, gathered from a strided array, or copied from another file),
//! then committed and mapped `r+`.
//!
//! [`PayloadWriter`] is the one writer of a known number of payload bytes into a temp; a store
//! commit uses it too, with the payload after the `.npy` header, and has it hash what it writes
//! in the same pass (see [`crate::checksum`]).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};

use crate::atomic::PendingFile;
use crate::checked::{add, to_u64};
use crate::checksum::{Digest, Hasher};
use crate::copy::{self, Between, ChunkBudget, RangeEnd};
use crate::dir::CacheDir;
use crate::error::{Error, Result};
use crate::fs::Fs;
use crate::gather::{GatherCursor, StridedBytes};
use crate::mapping::{Mapping, MappingMode};
use crate::names::validate_name;
use crate::sequential::{self, CacheUse, Source};
use crate::sync_pool::lock;

/// The bounce buffers of gathered writes, kept for the next one: two of at most half of
/// [`copy::BOUNCE_BUFFER_CAP`] each (4 MiB in all), so a process's conversions of strided sources
/// fault their buffers' pages in once, not at every write. A fresh allocation of that size is a
/// fresh mapping, whose every page faults on first touch: about 1 ms per write on bare metal, and
/// far more on a virtual machine whose host has taken back memory the process freed.
struct SpareBuffers {
    kept: Mutex<Vec<Vec<u8>>>,
}

static SPARE_BUFFERS: SpareBuffers = SpareBuffers::new();

/// How many spare buffers are kept (a gathered write uses two at a time).
const SPARES_KEPT: usize = 2;

impl SpareBuffers {
    const fn new() -> Self {
        Self {
            kept: Mutex::new(Vec::new()),
        }
    }

    /// A buffer of at least `len` bytes: a kept one, else a new one of exactly `len`.
    fn take(&self, len: usize) -> Vec<u8> {
        let mut kept = lock(&self.kept);
        match kept.iter().position(|spare| spare.len() >= len) {
            Some(index) => kept.swap_remove(index),
            None => vec![0u8; len],
        }
    }

    /// Keeps `buffer` for a later write if it is among the largest few, else frees it (after the
    /// lock is released: freeing a large buffer is a system call).
    fn give_back(&self, buffer: Vec<u8>) {
        let evicted = {
            let mut kept = lock(&self.kept);
            kept.push(buffer);
            kept.sort_by_key(|spare| std::cmp::Reverse(spare.len()));
            let keep = SPARES_KEPT.min(kept.len());
            kept.split_off(keep)
        };
        drop(evicted);
    }
}

/// `len` bytes of the file `name` in the same directory, from `offset`.
#[derive(Debug, Clone, Copy)]
pub struct FileRange<'a> {
    /// The source file.
    pub name: &'a str,
    /// Where the range starts.
    pub offset: u64,
    /// How many bytes it holds.
    pub len: u64,
}

/// How many written bytes a durable payload accumulates before their writeback is started.
///
/// A durable file ends with an fsync that waits for every byte to reach the disk. Starting the
/// writeback of each such step as soon as it is written lets the disk work while the next step
/// is copied, so the final fsync finds little left to do: a 1.2 GB durable write measured
/// 0.33 s this way against 0.49 s with one fsync at the end.
pub const WRITEBACK_STEP: u64 = 16 << 20;

/// How much of a contiguous block one `pwrite` takes (and a hashing writer hashes just before):
/// small enough to still be in the CPU cache when `pwrite` copies it out, so hashing costs no
/// second trip to memory, and large enough that the page cache keeps the written data in large
/// folios, which later mappings fault in cheaply. Measured here, a durable store write of four
/// 64 MiB arrays spent a third of the CPU time in 4 MiB writes that it spent in 64 MiB ones.
const WRITE_SLICE: usize = 4 << 20;

/// From this many bytes on, a hashing copy reads the source for the hash on a second thread, while
/// the kernel copies it and the temp is fsynced, so the hash costs no time next to them; below
/// it, a thread costs more than it saves.
const BACKGROUND_HASH_MIN: u64 = 8 << 20;

/// Writes exactly `expected` payload bytes into a [`PendingFile`], starting at `base`; with a
/// hasher, hashes every byte as it writes it.
///
/// A durable payload (one that will be fsynced) starts the writeback of every
/// [`WRITEBACK_STEP`] bytes as they are written.
#[derive(Debug)]
pub struct PayloadWriter {
    file: PendingFile,
    base: u64,
    expected: u64,
    written: u64,
    budget: ChunkBudget,
    writeback: Writeback,
    hasher: Option<Hasher>,
    // The hash of a copied payload, finishing on another thread (the hasher is there meanwhile).
    background: Option<BackgroundHash>,
}

impl PayloadWriter {
    /// A writer of `expected` payload bytes at `base` in `file`, moving at most `budget`
    /// bytes per step; `durable` when the file will be fsynced.
    pub fn new(file: PendingFile, base: u64, expected: u64, budget: ChunkBudget, durable: bool) -> Self {
        Self {
            file,
            base,
            expected,
            written: 0,
            budget,
            writeback: Writeback { durable, from: base },
            hasher: None,
            background: None,
        }
    }

    /// Whether the file will be fsynced when committed.
    pub fn durable(&self) -> bool {
        self.writeback.durable
    }

    /// Hashes every payload byte written from now on into `hasher`, which may already hold the
    /// bytes before the payload (the `.npy` header). `None` hashes nothing.
    #[must_use]
    pub fn hashing(mut self, hasher: Option<Hasher>) -> Self {
        self.hasher = hasher;
        self
    }

    /// The temp being written.
    pub fn file(&self) -> &PendingFile {
        &self.file
    }

    /// Where the payload starts in the file.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Payload bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The file offset where `len` more payload bytes go.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`] if the payload would exceed the expected size.
    fn next_offset(&self, len: u64) -> Result<u64> {
        let end = add(self.written, len)?;
        if end > self.expected {
            return Err(Error::SizeMismatch {
                path: self.file.path(),
                expected: self.expected,
                actual: end,
            });
        }
        add(self.base, self.written)
    }

    /// Appends a contiguous `block` to the payload, in pieces of the budget (`between` runs
    /// between them), each written in slices of at most 4 MiB.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`] if the payload would exceed the expected size; as
    /// [`copy::write_chunked`] otherwise.
    pub fn write_block(&mut self, block: &[u8], between: Between<'_>) -> Result<()> {
        let len = to_u64(block.len());
        let mut at = self.next_offset(len)?;
        let path = self.file.temp_path();
        let mut first = true;
        let mut moved = 0;
        for piece in block.chunks(self.budget.piece_len()) {
            copy::between_chunks(&mut first, between, moved)?;
            let mut rest = piece;
            while !rest.is_empty() {
                // Slices end on multiples of WRITE_SLICE in the file (the payload of a .npy starts
                // at 4096), so the page cache can hold them in large, naturally aligned folios.
                let room = WRITE_SLICE - usize::try_from(at % to_u64(WRITE_SLICE)).unwrap_or(0);
                let (slice, tail) = rest.split_at(room.min(rest.len()));
                at = self.write_slice(slice, at, &path)?;
                rest = tail;
            }
            moved = to_u64(piece.len());
        }
        self.written += len;
        Ok(())
    }

    /// Appends the C-order bytes of a strided `source`. The bounce buffer of
    /// [`ChunkBudget::bounce_len`] bytes is split in two halves: while one half is written, a
    /// helper thread gathers the next bytes into the other, so the gather costs no time next
    /// to the write. A source that fits one half is gathered and written inline.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`] if the payload would exceed the expected size; as
    /// [`copy::write_all_at`], or whatever `between` returns (the helper then stops too).
    pub fn write_gathered(&mut self, source: &StridedBytes<'_>, between: Between<'_>) -> Result<()> {
        let len = source.byte_len();
        let at = self.next_offset(len)?;
        let half = self.budget.bounce_len(len).div_ceil(2).max(1);
        if to_u64(half) >= len {
            let mut buffer = SPARE_BUFFERS.take(half);
            let filled = source.gather(&mut GatherCursor::default(), buffer.get_mut(..half).unwrap_or_default());
            let written = self.write_piece(buffer.get(..filled).unwrap_or_default(), at, (&mut true, 0), between);
            SPARE_BUFFERS.give_back(buffer);
            return written;
        }
        let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(1);
        let (empty_tx, empty_rx) = mpsc::sync_channel::<Vec<u8>>(2);
        for _ in 0..2 {
            // Cannot fail: the channel has room for both and its receiver is alive.
            let _ = empty_tx.send(SPARE_BUFFERS.take(half));
        }
        thread::scope(|scope| {
            scope.spawn(move || {
                let mut cursor = GatherCursor::default();
                // Ends when the source is exhausted or the writer hung up (it failed).
                while let Ok(mut buffer) = empty_rx.recv() {
                    let filled = source.gather(&mut cursor, buffer.get_mut(..half).unwrap_or_default());
                    if filled == 0 {
                        SPARE_BUFFERS.give_back(buffer);
                        break;
                    }
                    if let Err(mpsc::SendError((buffer, _))) = full_tx.send((buffer, filled)) {
                        SPARE_BUFFERS.give_back(buffer);
                        break;
                    }
                }
            });
            // Owned here, so that leaving early (an error) hangs up on the helper: its next
            // receive fails and it ends before the scope joins it.
            let (full_rx, empty_tx) = (full_rx, empty_tx);
            let mut first = true;
            let mut moved = 0;
            let mut at = at;
            for (buffer, filled) in full_rx {
                let piece = buffer.get(..filled).unwrap_or_default();
                let written = self.write_piece(piece, at, (&mut first, moved), between);
                moved = to_u64(filled);
                at = add(at, moved)?;
                if let Err(error) = written {
                    SPARE_BUFFERS.give_back(buffer);
                    return Err(error);
                }
                // The helper may have finished already; the buffer then goes back to the spares.
                if let Err(mpsc::SendError(buffer)) = empty_tx.send(buffer) {
                    SPARE_BUFFERS.give_back(buffer);
                }
            }
            Ok(())
        })
    }

    /// Writes (and hashes) one gathered `piece` at `at`, calling `between` with the `moved` bytes
    /// of the previous piece before every piece but the first.
    fn write_piece(
        &mut self,
        piece: &[u8],
        at: u64,
        (first, moved): (&mut bool, u64),
        between: Between<'_>,
    ) -> Result<()> {
        if piece.is_empty() {
            return Ok(());
        }
        copy::between_chunks(first, between, moved)?;
        self.write_slice(piece, at, &self.file.temp_path())?;
        self.written += to_u64(piece.len());
        Ok(())
    }

    /// Hashes `slice` (while it is still in the CPU cache), writes it at `at` of the temp, whose
    /// path is `path`, and starts the writeback of the steps it completes; returns where it ends.
    fn write_slice(&mut self, slice: &[u8], at: u64, path: &Path) -> Result<u64> {
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(slice);
        }
        let (fs, fd) = (self.file.dir().fs(), self.file.fd());
        copy::write_all_at(fs, fd, path, slice, at)?;
        let end = add(at, to_u64(slice.len()))?;
        self.writeback.advance(fs, fd, end);
        Ok(end)
    }

    /// Fills the rest of the payload from `src_name` (in the same directory) at `src_offset`.
    ///
    /// The bytes are reflinked or copied inside the kernel where the filesystem can, so they
    /// never pass through user space. A hashing writer reads the source once more for the hash,
    /// through read-only mappings ([`sequential::read_sequential`]): from
    /// [`BACKGROUND_HASH_MIN`] bytes on on a second thread, which goes on while the temp is
    /// fsynced (see [`PayloadWriter::finish_parts`]), else right after the copy.
    ///
    /// # Errors
    /// [`Error::InvalidName`]; [`Error::Io`] with [`Op::Open`] or [`Op::Stat`] for the source;
    /// [`Error::SizeMismatch`] if the source is too short; as [`copy::copy_between`] otherwise.
    ///
    /// [`Op::Open`]: crate::Op::Open
    /// [`Op::Stat`]: crate::Op::Stat
    pub fn copy_from(&mut self, src_name: &str, src_offset: u64, between: Between<'_>) -> Result<()> {
        let dir = self.file.dir().clone();
        let remaining = self.expected - self.written;
        let src = dir.open_holding(src_name, src_offset, remaining)?;
        let src_path = dir.path_of(src_name);
        self.copy_range(src.as_fd(), &src_path, src_offset, remaining, &mut true, between)
    }

    /// Fills the rest of the payload with the bytes of `patch`, a copy-on-write window of
    /// `src_name` (in the same directory) from `src_offset`: the pages of `patch` that were
    /// written come from its memory, every other range is copied from the file (reflink or
    /// `copy_file_range`, no user-space copy). When the written pages cannot be told, all of it
    /// comes from memory.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`] if `patch` does not hold exactly the rest of the payload or the
    /// source is too short; as [`PayloadWriter::copy_from`] and [`PayloadWriter::write_block`].
    pub fn copy_patched_from(
        &mut self,
        src_name: &str,
        src_offset: u64,
        patch: &Mapping,
        between: Between<'_>,
    ) -> Result<()> {
        let remaining = self.expected - self.written;
        if to_u64(patch.len()) != remaining {
            return Err(Error::SizeMismatch {
                path: patch.path().to_path_buf(),
                expected: remaining,
                actual: to_u64(patch.len()),
            });
        }
        let dir = self.file.dir().clone();
        // Only the file `patch` maps, at the offset it maps, holds its unwritten bytes: a file
        // renamed over the name since (a newer commit, shorter or laid out otherwise) or none at
        // all holds other ones, so everything then comes from the mapping.
        let src = match dir.open_read(src_name) {
            Ok(src) => Some(src),
            Err(err) if err.is_missing() => None,
            Err(err) => return Err(err),
        };
        // (A failed fstat counts as another file: the mapping holds every byte either way.)
        let same_file = src
            .as_ref()
            .and_then(|src| dir.fs().fstat(src.as_fd()).ok())
            .filter(|stat| stat.identity == patch.identity() && patch.offset() == src_offset);
        // The page map is read only for the same file: the written pages matter only then.
        let written = same_file.as_ref().and_then(|_| patch.private_ranges());
        let (Some(src), Some(stat), Some(written)) = (src, same_file, written) else {
            return self.write_block(patch.window_bytes(0..patch.len())?, between);
        };
        dir.check_holds(src_name, stat.len, src_offset, remaining)?;
        let src_path = dir.path_of(src_name);
        let mut first = true;
        let mut done = 0;
        for range in written.into_iter().chain(std::iter::once(patch.len()..patch.len())) {
            if done < range.start {
                let len = to_u64(range.start - done);
                let from = add(src_offset, to_u64(done))?;
                self.copy_range(src.as_fd(), &src_path, from, len, &mut first, between)?;
            }
            if !range.is_empty() {
                copy::between_chunks(&mut first, between, 0)?;
                self.write_block(patch.window_bytes(range.clone())?, between)?;
            }
            done = range.end;
        }
        Ok(())
    }

    /// Appends `len` bytes of the open file `src` from `src_offset`; a durable payload step by
    /// step, each step's writeback started behind it. `between` runs between steps (`first`:
    /// none has run yet).
    fn copy_range(
        &mut self,
        src: BorrowedFd<'_>,
        src_path: &Path,
        src_offset: u64,
        len: u64,
        first: &mut bool,
        between: Between<'_>,
    ) -> Result<()> {
        if len == 0 {
            // Nothing to copy or hash; a hash of the payload's end still running must not be
            // replaced by this range's (absent) one.
            return Ok(());
        }
        let temp_path = self.file.temp_path();
        let at = self.next_offset(len)?;
        let dir = self.file.dir().clone();
        let from = RangeEnd {
            fd: src,
            path: src_path,
            offset: src_offset,
        };
        let to = RangeEnd {
            fd: self.file.fd(),
            path: &temp_path,
            offset: at,
        };
        let mut hasher = self.hasher.take();
        let ends_payload = add(self.written, len)? == self.expected;
        let background = match &hasher {
            // Only the last range may be hashed on the side: nothing is hashed after it.
            Some(started) if ends_payload && len >= BACKGROUND_HASH_MIN => {
                src.try_clone_to_owned().ok().and_then(|fd| {
                    BackgroundHash::start(
                        dir.clone(),
                        fd,
                        src_path.to_path_buf(),
                        (src_offset, len),
                        started.clone(),
                    )
                })
            }
            _ => None,
        };
        // A durable payload is copied step by step, each step ending on a multiple of
        // WRITEBACK_STEP in the file, so that its writeback starts while the next one is copied.
        let mut done = 0;
        let mut unreported = 0;
        while done < len {
            let position = add(at, done)?;
            let step_end = if self.writeback.durable {
                (position - position % WRITEBACK_STEP).saturating_add(WRITEBACK_STEP)
            } else {
                u64::MAX
            };
            let piece = (len - done).min(step_end - position);
            // The bytes of a step's last chunk are reported before the next step.
            copy::between_chunks(first, between, unreported)?;
            let from = RangeEnd {
                offset: add(src_offset, done)?,
                ..from
            };
            let to = RangeEnd { offset: position, ..to };
            let mut reported = 0;
            let mut report = |moved: u64| {
                reported += moved;
                between(moved)
            };
            // A failed copy drops `background`, which stops the hashing thread.
            copy::copy_between(dir.fs(), from, to, piece, self.budget, &mut report)?;
            unreported = piece - reported;
            done += piece;
            self.writeback.advance(dir.fs(), to.fd, add(at, done)?);
        }
        self.written += len;
        if let (Some(hasher), None) = (hasher.as_mut(), &background) {
            hash_range(
                dir.fs(),
                src,
                src_path,
                (src_offset, len),
                hasher,
                &AtomicBool::new(false),
            )?;
        }
        self.hasher = hasher;
        self.background = background;
        Ok(())
    }

    /// The finished temp, after checking that the whole payload arrived.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`] when fewer bytes were written than expected.
    pub fn finish(self) -> Result<PendingFile> {
        self.finish_hashed().map(|(file, _)| file)
    }

    /// The finished temp and, for a hashing writer, the digest of everything it hashed.
    ///
    /// # Errors
    /// As [`PayloadWriter::finish`], or the error of a background hash.
    pub fn finish_hashed(self) -> Result<(PendingFile, Option<Digest>)> {
        let (file, digest) = self.finish_parts()?;
        Ok((file, digest.wait()?))
    }

    /// The finished temp and the digest to come: a background hash may still be reading the
    /// source, so the caller can fsync the temp meanwhile and wait for the digest after.
    ///
    /// # Errors
    /// As [`PayloadWriter::finish`].
    pub fn finish_parts(self) -> Result<(PendingFile, PendingDigest)> {
        if self.written != self.expected {
            return Err(Error::SizeMismatch {
                path: self.file.path(),
                expected: self.expected,
                actual: self.written,
            });
        }
        // With a background hash, the hasher kept here is the copy it started from.
        let digest = match (self.background, self.hasher) {
            (Some(background), _) => PendingDigest::Background(background),
            (None, hasher) => PendingDigest::Ready(hasher.as_ref().map(Hasher::digest)),
        };
        Ok((self.file, digest))
    }
}

/// The writeback hints of a durable payload.
#[derive(Debug)]
struct Writeback {
    durable: bool,
    /// The file offset up to which writeback has been started.
    from: u64,
}

impl Writeback {
    /// Starts the writeback of what was written up to `end`, up to its last multiple of
    /// [`WRITEBACK_STEP`] in the file (durable payloads only): steps end where the write slices
    /// do. A hint: a refusal is ignored, since the fsync that follows reports any error.
    fn advance(&mut self, fs: &dyn Fs, fd: BorrowedFd<'_>, end: u64) {
        let boundary = end - end % WRITEBACK_STEP;
        if !self.durable || boundary <= self.from {
            return;
        }
        let _ = fs.start_writeback(fd, self.from, boundary - self.from);
        self.from = boundary;
    }
}

/// The digest of a finished payload: known, or still being computed by a [`BackgroundHash`].
#[derive(Debug)]
pub enum PendingDigest {
    /// Known now (`None`: the writer did not hash).
    Ready(Option<Digest>),
    /// Computed on another thread.
    Background(BackgroundHash),
}

impl PendingDigest {
    /// The digest, waiting for a background hash to finish.
    ///
    /// # Errors
    /// The errors of reading the source for the hash ([`sequential::read_sequential`]).
    pub fn wait(self) -> Result<Option<Digest>> {
        match self {
            PendingDigest::Ready(digest) => Ok(digest),
            PendingDigest::Background(background) => background.wait().map(|hasher| Some(hasher.digest())),
        }
    }
}

/// Feeds `range` of the open file `fd` to `hasher`, stopping with [`Error::Interrupted`] once
/// `stop` is set.
fn hash_range(
    fs: &dyn Fs,
    fd: std::os::fd::BorrowedFd<'_>,
    path: &std::path::Path,
    (offset, len): (u64, u64),
    hasher: &mut Hasher,
    stop: &AtomicBool,
) -> Result<()> {
    let source = Source { fd, path, offset, len };
    sequential::read_sequential(fs, source, CacheUse::Keep, &mut |bytes| {
        if stop.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        hasher.update(bytes);
        Ok(())
    })
}

/// A range of a file hashed on a thread of its own. Dropping it before [`BackgroundHash::wait`]
/// tells the thread to stop (it ends at its next window).
#[derive(Debug)]
pub struct BackgroundHash {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<Hasher>>>,
}

impl BackgroundHash {
    /// Starts feeding `range` of the file open as `fd` to `hasher` on a new thread; `None` when
    /// no thread can be started.
    fn start(dir: CacheDir, fd: OwnedFd, path: PathBuf, range: (u64, u64), mut hasher: Hasher) -> Option<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let work = move || -> Result<Hasher> {
            hash_range(dir.fs(), fd.as_fd(), &path, range, &mut hasher, &flag)?;
            Ok(hasher)
        };
        let handle = thread::Builder::new().spawn(work).ok()?;
        Some(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// The hasher, once the whole range is in it.
    ///
    /// # Errors
    /// What reading the range failed with.
    pub fn wait(mut self) -> Result<Hasher> {
        // A panic cannot happen on the thread (the workspace denies them); report one as a stop.
        self.handle.take().map_or(Err(Error::Interrupted), |handle| {
            handle.join().unwrap_or(Err(Error::Interrupted))
        })
    }
}

impl Drop for BackgroundHash {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl CacheDir {
    /// Starts an atomic replacement of `name` with `nbytes` bytes: creates and reserves the temp.
    /// A `durable` file is fsynced (and its directory too) when committed.
    ///
    /// # Errors
    /// As [`PendingFile::create`] and [`PendingFile::reserve`].
    pub fn begin_write(&self, name: &str, nbytes: u64, budget: ChunkBudget, durable: bool) -> Result<PayloadWriter> {
        let file = PendingFile::create(self, name)?;
        file.reserve(nbytes)?;
        Ok(PayloadWriter::new(file, 0, nbytes, budget, durable))
    }

    /// Commits a finished [`PayloadWriter`] (durably if it was begun so) and maps the new file
    /// `r+`.
    ///
    /// # Errors
    /// As [`PayloadWriter::finish`], [`PendingFile::commit`] and [`Mapping::from_fd`].
    pub fn finish_write(&self, writer: PayloadWriter) -> Result<Mapping> {
        let len = writer.expected;
        let durable = writer.durable();
        let file = writer.finish()?;
        self.commit_and_map(file, len, durable)
    }

    fn commit_and_map(&self, mut file: PendingFile, len: u64, durable: bool) -> Result<Mapping> {
        file.commit(durable)?;
        Mapping::from_fd(self.fs(), file.fd(), &file.path(), MappingMode::ReadWrite, 0, Some(len))
    }

    /// Atomically replaces `name` with `nbytes` reserved zero bytes and maps it `r+`.
    ///
    /// # Errors
    /// As [`PendingFile::create`], [`PendingFile::reserve`], [`PendingFile::commit`] and
    /// [`Mapping::from_fd`].
    pub fn write_zeroed(&self, name: &str, nbytes: u64, durable: bool) -> Result<Mapping> {
        let file = PendingFile::create(self, name)?;
        file.reserve(nbytes)?;
        self.commit_and_map(file, nbytes, durable)
    }

    /// Atomically replaces `dst` with the bytes of `src` and maps it `r+`; the bytes move in
    /// pieces of `budget`. With `patch` (a copy-on-write window of that range of `src`), its
    /// written pages take the place of the file's bytes: see [`PayloadWriter::copy_patched_from`].
    ///
    /// # Errors
    /// As [`CacheDir::begin_write`], [`PayloadWriter::copy_from`] (or
    /// [`PayloadWriter::copy_patched_from`]) and [`CacheDir::finish_write`].
    /// On any error the temp is removed and `dst` is unchanged, unless the rename happened
    /// (a failing directory fsync or mapping leaves the new content in place).
    pub fn replace_with_range(
        &self,
        src: FileRange<'_>,
        patch: Option<&Mapping>,
        dst: &str,
        durable: bool,
        budget: ChunkBudget,
        between: Between<'_>,
    ) -> Result<Mapping> {
        validate_name(src.name)?;
        let mut writer = self.begin_write(dst, src.len, budget, durable)?;
        match patch {
            Some(patch) => writer.copy_patched_from(src.name, src.offset, patch, between)?,
            None => writer.copy_from(src.name, src.offset, between)?,
        }
        self.finish_write(writer)
    }
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::*;
    use crate::dir::open_temp_dir;

    fn no_pause() -> impl FnMut(u64) -> Result<()> {
        |_| Ok(())
    }

    #[test]
    fn spare_buffers_hand_back_a_kept_buffer_large_enough_and_keep_only_the_largest_two() {
        let spares = SpareBuffers::new();
        let first = spares.take(100);
        assert_eq!(first.len(), 100);
        let pointer = first.as_ptr();
        spares.give_back(first);

        let again = spares.take(60);
        assert_eq!(
            again.as_ptr(),
            pointer,
            "a kept buffer of at least the length is reused"
        );
        assert_eq!(spares.take(200).len(), 200, "none large enough: a new one");
        spares.give_back(again);
        for len in [10, 300, 20] {
            spares.give_back(vec![0u8; len]);
        }

        let kept: Vec<usize> = lock(&spares.kept).iter().map(Vec::len).collect();
        assert_eq!(kept, vec![300, 100]);
    }

    #[test]
    fn payload_writer_refuses_more_than_the_expected_payload() {
        let (tmp, dir) = open_temp_dir();
        let mut writer = dir.begin_write("k.dat", 4, ChunkBudget::new(16), false).unwrap();
        writer.write_block(b"ab", &mut no_pause()).unwrap();

        let err = writer.write_block(b"cde", &mut no_pause()).unwrap_err();

        assert!(
            matches!(
                err,
                Error::SizeMismatch {
                    expected: 4,
                    actual: 5,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(writer.written(), 2);
        assert_eq!(fs::read(tmp.path().join("k.dat.tmp")).unwrap(), b"ab\0\0");
    }

    /// Replaces `k.dat` with `len` bytes of `k.npy` from `offset`, `patch` supplying its written pages.
    fn copy_patched(dir: &CacheDir, patch: &Mapping, offset: u64, len: u64) {
        let src = FileRange {
            name: "k.npy",
            offset,
            len,
        };
        dir.replace_with_range(
            src,
            Some(patch),
            "k.dat",
            false,
            ChunkBudget::new(1 << 20),
            &mut no_pause(),
        )
        .unwrap();
    }

    #[test]
    fn a_patched_copy_takes_written_pages_from_the_mapping_and_the_rest_from_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let page = 4096;
        let payload: Vec<u8> = (0..40 * page).map(|index| (index % 249) as u8).collect();
        let mut file = vec![0xAAu8; page];
        file.extend_from_slice(&payload);
        fs::write(tmp.path().join("k.npy"), &file).unwrap();
        let recording = std::sync::Arc::new(crate::fs::RecordingFs::new());
        let dir = CacheDir::open_with(tmp.path(), false, recording.clone()).unwrap();
        let len = payload.len() as u64;
        let patch = Mapping::open(&dir, "k.npy", MappingMode::CopyOnWrite, page as u64, Some(len)).unwrap();
        let mut expected = payload.clone();
        for at in [5, 17 * page + 3, 39 * page + 100] {
            // SAFETY: the window is writable (`c`) and `at` lies inside it.
            #[allow(unsafe_code)]
            unsafe {
                patch.as_ptr().add(at).write_volatile(0xEE);
            }
            expected[at] = 0xEE;
        }
        recording.clear();

        copy_patched(&dir, &patch, page as u64, len);

        assert_eq!(fs::read(tmp.path().join("k.dat")).unwrap(), expected);
        assert_eq!(
            fs::read(tmp.path().join("k.npy")).unwrap(),
            file,
            "the source never changes"
        );
        let written: usize = recording
            .calls()
            .iter()
            .filter(|call| call.op == crate::Op::Write)
            .count();
        assert_eq!(written, 3, "one pwrite per written page, the rest copied in the kernel");
    }

    /// Maps `k.npy` copy-on-write, lets `change` replace or remove the file under its name, then
    /// copies the mapping's window into `k.dat`: the copy must hold what was mapped.
    fn assert_patched_copy_keeps_what_was_mapped(change: impl FnOnce(&Path)) {
        let (tmp, dir) = open_temp_dir();
        let old: Vec<u8> = (0..8 * 4096usize).map(|index| (index % 251) as u8).collect();
        fs::write(tmp.path().join("k.npy"), &old).unwrap();
        let len = old.len() as u64;
        let patch = Mapping::open(&dir, "k.npy", MappingMode::CopyOnWrite, 0, Some(len)).unwrap();
        change(tmp.path());

        copy_patched(&dir, &patch, 0, len);

        assert_eq!(fs::read(tmp.path().join("k.dat")).unwrap(), old);
    }

    fn replace_npy(directory: &Path, len: usize) {
        fs::write(directory.join("new"), vec![0x55u8; len]).unwrap();
        fs::rename(directory.join("new"), directory.join("k.npy")).unwrap();
    }

    #[test]
    fn a_patched_copy_of_a_file_replaced_since_it_was_mapped_comes_from_the_mapping() {
        assert_patched_copy_keeps_what_was_mapped(|directory| replace_npy(directory, 8 * 4096));
    }

    #[test]
    fn a_patched_copy_of_a_file_replaced_by_a_shorter_one_comes_from_the_mapping() {
        assert_patched_copy_keeps_what_was_mapped(|directory| replace_npy(directory, 4096));
    }

    #[test]
    fn a_patched_copy_of_a_file_removed_since_it_was_mapped_comes_from_the_mapping() {
        assert_patched_copy_keeps_what_was_mapped(|directory| fs::remove_file(directory.join("k.npy")).unwrap());
    }

    #[test]
    fn a_patched_copy_asked_for_another_offset_than_the_mapping_s_comes_from_the_mapping() {
        let (tmp, dir) = open_temp_dir();
        let file: Vec<u8> = (0..3 * 4096usize).map(|index| (index % 253) as u8).collect();
        fs::write(tmp.path().join("k.npy"), &file).unwrap();
        let len = 2 * 4096;
        let patch = Mapping::open(&dir, "k.npy", MappingMode::CopyOnWrite, 4096, Some(len)).unwrap();

        copy_patched(&dir, &patch, 0, len);

        assert_eq!(
            fs::read(tmp.path().join("k.dat")).unwrap(),
            &file[4096..],
            "the mapping's window, not the file's bytes at the offset asked for"
        );
    }

    #[test]
    fn payload_writer_refuses_to_finish_short() {
        let (tmp, dir) = open_temp_dir();
        let mut writer = dir.begin_write("k.dat", 4, ChunkBudget::new(16), false).unwrap();
        writer.write_block(b"abc", &mut no_pause()).unwrap();

        let err = writer.finish().unwrap_err();

        assert!(
            matches!(
                err,
                Error::SizeMismatch {
                    expected: 4,
                    actual: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert!(!tmp.path().join("k.dat.tmp").exists());
        assert!(!tmp.path().join("k.dat").exists());
    }

    fn fortran_source(memory: &[u8]) -> StridedBytes<'_> {
        // A (25, 16) u16 array in column-major order.
        StridedBytes::new(memory, 0, &[25, 16], &[2, 50], 2).unwrap()
    }

    fn c_order_of_fortran(memory: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for row in 0..25 {
            for col in 0..16 {
                let at = row * 2 + col * 50;
                out.extend_from_slice(&memory[at..at + 2]);
            }
        }
        out
    }

    #[test]
    fn gathered_source_is_written_in_c_order_in_pieces_of_half_the_bounce_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let recording = std::sync::Arc::new(crate::fs::RecordingFs::new());
        let dir = CacheDir::open_with(tmp.path(), false, recording.clone()).unwrap();
        let memory: Vec<u8> = (0..800u32).map(|index| u8::try_from(index % 251).unwrap()).collect();
        let mut pauses = 0;
        let mut writer = dir.begin_write("k.dat", 800, ChunkBudget::new(100), false).unwrap();

        writer
            .write_gathered(&fortran_source(&memory), &mut |_| {
                pauses += 1;
                Ok(())
            })
            .unwrap();
        dir.finish_write(writer).unwrap();

        assert_eq!(fs::read(tmp.path().join("k.dat")).unwrap(), c_order_of_fortran(&memory));
        let pwrites = recording
            .calls()
            .iter()
            .filter(|call| call.op == crate::Op::Write)
            .count();
        assert_eq!(pwrites, 800 / 50, "two 50-byte halves share the 100-byte budget");
        assert_eq!(pauses, pwrites - 1, "between runs between pieces only");
    }

    #[test]
    fn a_stopped_gathered_write_stops_the_helper_and_leaves_no_temp() {
        let (tmp, dir) = open_temp_dir();
        let memory = vec![7u8; 800];
        let mut writer = dir.begin_write("k.dat", 800, ChunkBudget::new(100), false).unwrap();

        let err = writer
            .write_gathered(&fortran_source(&memory), &mut |_| Err(Error::Interrupted))
            .unwrap_err();

        assert!(matches!(err, Error::Interrupted), "{err}");
        assert_eq!(writer.written(), 50, "only the first piece went out");
        drop(writer);
        assert!(!tmp.path().join("k.dat.tmp").exists());
    }

    #[test]
    fn a_gathered_source_larger_than_the_payload_is_refused_before_writing() {
        let (_tmp, dir) = open_temp_dir();
        let memory = vec![7u8; 800];
        let mut writer = dir.begin_write("k.dat", 100, ChunkBudget::new(100), false).unwrap();

        let err = writer
            .write_gathered(&fortran_source(&memory), &mut no_pause())
            .unwrap_err();

        assert!(
            matches!(
                err,
                Error::SizeMismatch {
                    expected: 100,
                    actual: 800,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(writer.written(), 0);
    }
}
