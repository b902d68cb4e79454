//! Atomic replacement of one file: a locked, exclusive temp next to it, renamed over it.
//!
//! [`PendingFile`] owns `<name>.tmp` from creation to rename. It is created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` after any stale temp of that name is unlinked, so a planted
//! symlink is removed, never written through. Its permissions are never wider than the final
//! ones. It holds `flock(LOCK_EX)` so a concurrent sweep leaves it alone, and it is unlinked
//! on drop unless committed. A temp whose fsync failed is poisoned: never fsynced again, never
//! renamed.
//!
//! A group commit may stage thousands of temps, more than a process may keep open. Once a temp
//! is fsynced, [`PendingFile::close_synced`] turns it into a [`ClosedTemp`]: only its name,
//! no descriptor, protected from the sweep by the directory's shared [`WriterLock`] instead of
//! its own lock. Only a successful fsync makes one, so a temp whose fsync failed can never be
//! renamed. [`CommitGroup`] renames several closed temps in order and fsyncs the directory
//! once.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use rustix::fs::OFlags;
use rustix::io::Errno;

use crate::copy::{self, Between, ChunkBudget, RangeEnd};
use crate::dir::{CacheDir, WriterLock, validate_name};
use crate::error::{Error, Op, Result, add, to_u64};
use crate::fs::FileKind;
use crate::mapping::{Mapping, MappingMode};
use crate::reserve;

/// Suffix of every temp file.
pub const TEMP_SUFFIX: &str = ".tmp";

/// Mode of a temp while it may not be made wider yet.
const PRIVATE_MODE: u32 = 0o600;
/// Mode of a temp when no destination exists (the umask applies).
const DEFAULT_MODE: u32 = 0o666;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Poisoned,
    Committed,
    /// Handed over to a [`ClosedTemp`], which now owns the name.
    Closed,
}

/// A temp file that will atomically replace `name` in its directory.
#[derive(Debug)]
pub struct PendingFile {
    dir: CacheDir,
    name: String,
    temp: String,
    fd: OwnedFd,
    state: State,
}

impl PendingFile {
    /// Creates `<name>.tmp` exclusively (unlinking a stale one first), locks it and gives it the
    /// existing destination's permission bits, else `0666 & ~umask`.
    ///
    /// # Errors
    /// [`Error::InvalidName`]; [`Error::Io`] with [`Op::Stat`], [`Op::Unlink`], [`Op::Create`],
    /// [`Op::Lock`] (EINTR is retried) or [`Op::Chmod`]. Nothing is left behind on error.
    pub fn create(dir: &CacheDir, name: &str) -> Result<Self> {
        validate_name(name)?;
        let temp = temp_name(name);
        let fs = dir.fs();
        let existing_perm = match fs.stat_nofollow(dir.fd(), name) {
            Ok(stat) if stat.kind == FileKind::File => Some(stat.perm),
            Ok(_) => None,
            Err(err) if err.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => None,
            Err(err) => return Err(Error::io(Op::Stat, dir.path_of(name), err)),
        };
        match fs.unlink(dir.fd(), &temp) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {}
            Err(err) => return Err(Error::io(Op::Unlink, dir.path_of(&temp), err)),
        }
        let flags = OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDWR;
        let mode = if existing_perm.is_some() {
            PRIVATE_MODE
        } else {
            DEFAULT_MODE
        };
        let fd = fs
            .open(dir.fd(), &temp, flags, mode)
            .map_err(|err| Error::io(Op::Create, dir.path_of(&temp), err))?;
        let pending = Self {
            dir: dir.clone(),
            name: name.to_owned(),
            temp,
            fd,
            state: State::Open,
        };
        loop {
            match fs.lock_exclusive(pending.fd(), false) {
                Ok(()) => break,
                // A signal while a sweep holds the lock for a moment: wait again, as PEP 475 does.
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(Error::io(Op::Lock, pending.temp_path(), err)),
            }
        }
        if let Some(perm) = existing_perm {
            fs.fchmod(pending.fd(), perm)
                .map_err(|err| Error::io(Op::Chmod, pending.temp_path(), err))?;
        }
        Ok(pending)
    }

    /// The temp's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The directory the temp lives in.
    pub fn dir(&self) -> &CacheDir {
        &self.dir
    }

    /// The destination name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The destination path (for messages).
    pub fn path(&self) -> PathBuf {
        self.dir.path_of(&self.name)
    }

    /// The temp path (for messages).
    pub fn temp_path(&self) -> PathBuf {
        self.dir.path_of(&self.temp)
    }

    /// Reserves `len` bytes and sizes the file to `len` (see [`reserve::reserve_and_size`]).
    ///
    /// # Errors
    /// [`Error::Io`] with [`Op::Reserve`].
    pub fn reserve(&self, len: u64) -> Result<()> {
        reserve::reserve_and_size(self.dir.fs(), self.fd(), &self.temp_path(), len)
    }

    /// Writes `data` at `offset` in pieces of at most `budget` bytes.
    ///
    /// # Errors
    /// As [`copy::write_chunked`].
    pub fn write_at(&self, data: &[u8], offset: u64, budget: ChunkBudget, between: Between<'_>) -> Result<()> {
        copy::write_chunked(
            self.dir.fs(),
            self.fd(),
            &self.temp_path(),
            data,
            offset,
            budget,
            between,
        )
    }

    /// `fsync` of the temp. A failure poisons the temp: it is then never fsynced again and
    /// never renamed.
    ///
    /// # Errors
    /// [`Error::Io`] with [`Op::Fsync`] (also for a temp poisoned earlier).
    pub fn sync(&mut self) -> Result<()> {
        if self.state == State::Poisoned {
            return Err(self.poisoned_error());
        }
        self.dir.fs().fsync(self.fd()).map_err(|err| {
            self.state = State::Poisoned;
            Error::io(Op::Fsync, self.temp_path(), err)
        })
    }

    fn poisoned_error(&self) -> Error {
        Error::io(Op::Fsync, self.temp_path(), std::io::Error::from(Errno::IO))
    }

    /// Renames the temp over the destination; no fsync.
    ///
    /// # Errors
    /// [`Error::Rename`]; a poisoned temp is refused with [`Error::Io`] ([`Op::Fsync`]).
    fn rename_into_place(&mut self) -> Result<()> {
        if self.state == State::Poisoned {
            return Err(self.poisoned_error());
        }
        rename_temp(&self.dir, &self.temp, &self.name)?;
        self.state = State::Committed;
        Ok(())
    }

    /// Fsyncs the temp, then closes its descriptor (and so its `flock`), keeping only its name.
    /// `guard` must be a writer lock of the temp's directory: from now on it is what keeps a
    /// sweep away.
    ///
    /// # Errors
    /// [`Error::Io`] with [`Op::Fsync`]; the temp is then unlinked.
    pub fn close_synced(mut self, guard: Arc<WriterLock>) -> Result<ClosedTemp> {
        self.sync()?;
        self.state = State::Closed;
        Ok(ClosedTemp {
            dir: self.dir.clone(),
            name: std::mem::take(&mut self.name),
            temp: std::mem::take(&mut self.temp),
            committed: false,
            _guard: guard,
        })
    }

    /// `[fsync] → rename → [dir fsync]`; the fsyncs run only when `durable`. Afterwards
    /// [`PendingFile::fd`] is the committed file and dropping `self` only closes it.
    ///
    /// # Errors
    /// [`Error::Io`] ([`Op::Fsync`], [`Op::DirFsync`]) or [`Error::Rename`]. Unless the rename
    /// happened, the temp is unlinked on drop and the destination is unchanged.
    pub fn commit(&mut self, durable: bool) -> Result<()> {
        if durable {
            self.sync()?;
        }
        self.rename_into_place()?;
        if durable {
            self.dir.sync()?;
        }
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if matches!(self.state, State::Open | State::Poisoned) {
            // Best effort: a temp that cannot be unlinked here is removed by the next sweep.
            let _ = self.dir.fs().unlink(self.dir.fd(), &self.temp);
        }
    }
}

/// `renameat(temp → name)` in `dir`, with both paths in the error.
fn rename_temp(dir: &CacheDir, temp: &str, name: &str) -> Result<()> {
    dir.fs().rename(dir.fd(), temp, name).map_err(|source| Error::Rename {
        from: dir.path_of(temp),
        to: dir.path_of(name),
        source,
    })
}

/// A fsynced temp whose descriptor is closed: a name waiting to be renamed over its
/// destination, unlinked on drop unless committed. It keeps the directory's [`WriterLock`]
/// alive, so no sweep removes it meanwhile.
#[derive(Debug)]
pub struct ClosedTemp {
    dir: CacheDir,
    name: String,
    temp: String,
    committed: bool,
    // Fields drop after `Drop::drop`, so the lock outlives the unlink of an uncommitted temp.
    _guard: Arc<WriterLock>,
}

impl ClosedTemp {
    /// The destination name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renames the temp over the destination; no fsync.
    ///
    /// # Errors
    /// [`Error::Rename`].
    fn rename_into_place(&mut self) -> Result<()> {
        rename_temp(&self.dir, &self.temp, &self.name)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for ClosedTemp {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: a temp that cannot be unlinked here is removed by the next sweep.
            let _ = self.dir.fs().unlink(self.dir.fd(), &self.temp);
        }
    }
}

/// Several closed temps renamed in order, then one directory fsync.
#[derive(Debug)]
pub struct CommitGroup {
    dir: CacheDir,
    files: Vec<ClosedTemp>,
}

impl CommitGroup {
    /// An empty group in `dir`.
    pub fn new(dir: &CacheDir) -> Self {
        Self {
            dir: dir.clone(),
            files: Vec::new(),
        }
    }

    /// Adds a closed (hence fsynced) temp; it is renamed after those added before it.
    pub fn push(&mut self, file: ClosedTemp) {
        self.files.push(file);
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Renames every temp in order, then fsyncs the directory once (not at all when empty).
    ///
    /// # Errors
    /// On a rename failure the remaining temps are unlinked, the directory is fsynced (the
    /// renames before it are kept) and the rename error is returned. A failing final
    /// directory fsync is [`Error::Io`] with [`Op::DirFsync`].
    pub fn commit(self) -> Result<()> {
        if self.files.is_empty() {
            return Ok(());
        }
        let mut files = self.files.into_iter();
        for mut file in files.by_ref() {
            if let Err(err) = file.rename_into_place() {
                drop(file);
                drop(files);
                // The rename error is what the caller needs; a second failure adds nothing.
                let _ = self.dir.sync();
                return Err(err);
            }
        }
        self.dir.sync()
    }
}

/// Streams a known number of bytes into a [`PendingFile`] starting at `base`.
#[derive(Debug)]
pub struct StreamWriter {
    file: PendingFile,
    base: u64,
    expected: u64,
    written: u64,
    budget: ChunkBudget,
}

impl StreamWriter {
    /// A writer of `expected` payload bytes at `base` in `file`.
    pub fn new(file: PendingFile, base: u64, expected: u64, budget: ChunkBudget) -> Self {
        Self {
            file,
            base,
            expected,
            written: 0,
            budget,
        }
    }

    /// The temp being written.
    pub fn file(&self) -> &PendingFile {
        &self.file
    }

    /// Payload bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn overflow(&self, extra: u64) -> Error {
        Error::SizeMismatch {
            path: self.file.path(),
            expected: self.expected,
            actual: self.written.saturating_add(extra),
        }
    }

    /// Appends `block` to the payload.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`] if the payload would exceed the expected size; as
    /// [`copy::write_chunked`] otherwise.
    pub fn write_block(&mut self, block: &[u8], between: Between<'_>) -> Result<()> {
        let len = to_u64(block.len());
        let end = add(self.written, len)?;
        if end > self.expected {
            return Err(self.overflow(len));
        }
        let at = add(self.base, self.written)?;
        self.file.write_at(block, at, self.budget, between)?;
        self.written = end;
        Ok(())
    }

    /// Fills the rest of the payload from `src_name` (in the same directory) at `src_offset`.
    ///
    /// # Errors
    /// [`Error::InvalidName`]; [`Error::Io`] with [`Op::Open`] or [`Op::Stat`] for the source;
    /// [`Error::SizeMismatch`] if the source is too short; as [`copy::copy_range`] otherwise.
    pub fn copy_from(&mut self, src_name: &str, src_offset: u64, between: Between<'_>) -> Result<()> {
        let dir = self.file.dir().clone();
        let src = dir.open_read(src_name)?;
        let src_path = dir.path_of(src_name);
        let remaining = self.expected - self.written;
        let needed = add(src_offset, remaining)?;
        let actual = dir.file_len(src.as_fd(), src_name)?;
        if actual < needed {
            return Err(Error::SizeMismatch {
                path: src_path,
                expected: needed,
                actual,
            });
        }
        let temp_path = self.file.temp_path();
        let from = RangeEnd {
            fd: src.as_fd(),
            path: &src_path,
            offset: src_offset,
        };
        let to = RangeEnd {
            fd: self.file.fd(),
            path: &temp_path,
            offset: add(self.base, self.written)?,
        };
        copy::copy_range(dir.fs(), from, to, remaining, self.budget, between)?;
        self.written = self.expected;
        Ok(())
    }

    /// The finished temp, after checking that the whole payload arrived.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`] when fewer bytes were written than expected.
    pub fn finish(self) -> Result<PendingFile> {
        if self.written != self.expected {
            return Err(Error::SizeMismatch {
                path: self.file.path(),
                expected: self.expected,
                actual: self.written,
            });
        }
        Ok(self.file)
    }
}

impl CacheDir {
    /// Starts an atomic replacement of `name` with `nbytes` bytes: creates and reserves the temp.
    ///
    /// # Errors
    /// As [`PendingFile::create`] and [`PendingFile::reserve`].
    pub fn begin_write(&self, name: &str, nbytes: u64, budget: ChunkBudget) -> Result<StreamWriter> {
        let file = PendingFile::create(self, name)?;
        file.reserve(nbytes)?;
        Ok(StreamWriter::new(file, 0, nbytes, budget))
    }

    /// Commits a finished [`StreamWriter`] and maps the new file `r+`.
    ///
    /// # Errors
    /// As [`StreamWriter::finish`], [`PendingFile::commit`] and [`Mapping::from_fd`].
    pub fn finish_write(&self, writer: StreamWriter, durable: bool) -> Result<Mapping> {
        let len = writer.expected;
        let mut file = writer.finish()?;
        file.commit(durable)?;
        Mapping::from_fd(self.fs(), file.fd(), &file.path(), MappingMode::ReadWrite, 0, Some(len))
    }

    /// Atomically replaces `name` with `nbytes` reserved zero bytes and maps it `r+`.
    ///
    /// # Errors
    /// As [`CacheDir::begin_write`] and [`CacheDir::finish_write`].
    pub fn write_zeroed(&self, name: &str, nbytes: u64, durable: bool) -> Result<Mapping> {
        let mut writer = self.begin_write(name, nbytes, ChunkBudget::new(nbytes))?;
        writer.written = nbytes;
        self.finish_write(writer, durable)
    }

    /// Atomically replaces `dst` with `length` bytes of `src` from `src_offset` and maps it `r+`.
    ///
    /// # Errors
    /// As [`CacheDir::begin_write`], [`StreamWriter::copy_from`] and [`CacheDir::finish_write`].
    /// On any error the temp is removed and `dst` is unchanged, unless the rename happened
    /// (a failing directory fsync or mapping leaves the new content in place).
    pub fn copy_range(
        &self,
        src: &str,
        src_offset: u64,
        dst: &str,
        length: u64,
        durable: bool,
        between: Between<'_>,
    ) -> Result<Mapping> {
        validate_name(src)?;
        let mut writer = self.begin_write(dst, length, ChunkBudget::new(copy::DEFAULT_CHUNK_BYTES))?;
        writer.copy_from(src, src_offset, between)?;
        self.finish_write(writer, durable)
    }
}

/// The temp name of `name`.
pub fn temp_name(name: &str) -> String {
    format!("{name}{TEMP_SUFFIX}")
}
