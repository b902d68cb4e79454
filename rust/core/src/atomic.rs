//! Atomic replacement of one file: a locked, exclusive temp next to it, renamed over it.
//!
//! [`PendingFile`] owns `<name>.tmp` from creation to rename. It is created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW`, so a planted symlink is removed, never written through. Its
//! permissions are never wider than the final ones. It holds `flock(LOCK_EX)` so a concurrent
//! sweep leaves it alone, and it is unlinked on drop unless committed. A temp whose fsync
//! failed is poisoned: never fsynced again, never renamed.
//!
//! An existing temp of the same name is a live writer's while its `flock` is held: the creator
//! waits for that writer to finish, then tries again. An unlocked one is stale (a crash's
//! leftover, a planted link, or a closed temp of a store key whose writer lock the caller
//! holds, see [`crate::keylock`]) and is unlinked.
//!
//! A group commit may stage thousands of temps, more than a process may keep open. Once a temp
//! is fsynced, [`PendingFile::close_synced`] turns it into a [`ClosedTemp`]: only its name,
//! no descriptor, protected from the sweep by its key's [`KeyLock`] instead of its own lock.
//! Only a successful fsync makes one, so a temp whose fsync failed can never be renamed.
//! [`RenameGroup`] renames several closed temps in order and fsyncs the directory once.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use rustix::fs::OFlags;
use rustix::io::Errno;

use crate::copy::{self, Between, ChunkBudget};
use crate::dir::CacheDir;
use crate::error::{Error, Op, Result, is_gone};
use crate::fs::FileKind;
use crate::keylock::KeyLock;
use crate::names::{temp_name, validate_name};
use crate::reserve;

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
    identity: (u64, u64),
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
            Err(err) if is_gone(&err) => None,
            Err(err) => return Err(Error::io(Op::Stat, dir.path_of(name), err)),
        };
        let flags = OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDWR;
        let mode = if existing_perm.is_some() {
            PRIVATE_MODE
        } else {
            DEFAULT_MODE
        };
        let fd = loop {
            match fs.open(dir.fd(), &temp, flags, mode) {
                Ok(fd) => break fd,
                Err(err) if err.raw_os_error() == Some(Errno::EXIST.raw_os_error()) => {
                    remove_or_await(dir, &temp)?;
                }
                Err(err) => return Err(Error::io(Op::Create, dir.path_of(&temp), err)),
            }
        };
        let mut pending = Self {
            dir: dir.clone(),
            name: name.to_owned(),
            temp,
            fd,
            identity: (0, 0),
            state: State::Open,
        };
        lock_waiting(dir, pending.fd(), &pending.temp_path())?;
        // A sweep may have taken the fresh, still unlocked temp for a stale one and unlinked it
        // before the lock above: then the name is no longer ours, and we start over.
        let ours = fs
            .fstat(pending.fd())
            .map_err(|err| Error::io(Op::Stat, pending.temp_path(), err))?
            .identity;
        pending.identity = ours;
        let named = match fs.stat_nofollow(dir.fd(), &pending.temp) {
            Ok(stat) => Some(stat.identity),
            Err(err) if is_gone(&err) => None,
            Err(err) => return Err(Error::io(Op::Stat, pending.temp_path(), err)),
        };
        if named != Some(ours) {
            let mut lost = pending;
            // The name is not ours: leave whatever it names alone.
            lost.state = State::Committed;
            drop(lost);
            return Self::create(dir, name);
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

    /// Which file the temp is (device and inode numbers): the file its name holds once renamed.
    pub fn identity(&self) -> (u64, u64) {
        self.identity
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

    /// Writes all of a small `data` (a header, a sidecar) at `offset` in one piece.
    ///
    /// # Errors
    /// As [`copy::write_all_at`].
    pub fn write_all_at(&self, data: &[u8], offset: u64) -> Result<()> {
        copy::write_all_at(self.dir.fs(), self.fd(), &self.temp_path(), data, offset)
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
    /// `guard` must be the writer lock of the temp's key: from now on it is what keeps a sweep
    /// and other writers away.
    ///
    /// # Errors
    /// [`Error::Io`] with [`Op::Fsync`]; the temp is then unlinked.
    pub fn close_synced(mut self, guard: Arc<KeyLock>) -> Result<ClosedTemp> {
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

/// `flock(LOCK_EX)` on `fd`, waiting; EINTR is retried, as PEP 475 does.
fn lock_waiting(dir: &CacheDir, fd: BorrowedFd<'_>, path: &std::path::Path) -> Result<()> {
    loop {
        match dir.fs().lock_exclusive(fd, false) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(Error::io(Op::Lock, path, err)),
        }
    }
}

/// Clears the way for a new temp named `temp`: waits for the live writer that holds it locked
/// to finish, or unlinks it (the link itself, never its target) when nobody holds it.
fn remove_or_await(dir: &CacheDir, temp: &str) -> Result<()> {
    let fs = dir.fs();
    let path = dir.path_of(temp);
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let holder = match fs.open(dir.fd(), temp, flags, 0) {
        Ok(fd) => Some(fd),
        Err(err) if is_gone(&err) => return Ok(()),
        // A link (ELOOP) or something else we cannot open: never ours, remove the name.
        Err(_) => None,
    };
    // Held across the unlink, so no writer takes the name over in between.
    if let Some(fd) = &holder {
        match fs.lock_exclusive(fd.as_fd(), true) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(Errno::WOULDBLOCK.raw_os_error()) => {
                // A live writer: once it commits or gives up, its lock goes with its descriptor.
                return lock_waiting(dir, fd.as_fd(), &path);
            }
            Err(err) => return Err(Error::io(Op::Lock, path, err)),
        }
    }
    match fs.unlink(dir.fd(), temp) {
        Ok(()) => Ok(()),
        Err(err) if is_gone(&err) => Ok(()),
        Err(err) => Err(Error::io(Op::Unlink, path, err)),
    }
}

/// A fsynced temp whose descriptor is closed: a name waiting to be renamed over its
/// destination, unlinked on drop unless committed. It keeps its key's [`KeyLock`] alive, so
/// no sweep or other writer removes it meanwhile.
#[derive(Debug)]
pub struct ClosedTemp {
    dir: CacheDir,
    name: String,
    temp: String,
    committed: bool,
    // Fields drop after `Drop::drop`, so the lock outlives the unlink of an uncommitted temp.
    _guard: Arc<KeyLock>,
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
pub struct RenameGroup {
    dir: CacheDir,
    files: Vec<ClosedTemp>,
}

impl RenameGroup {
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
    /// renames before it are kept) and the rename error is returned with how many temps were
    /// renamed. A failing final directory fsync is [`Error::Io`] with [`Op::DirFsync`], all
    /// temps renamed.
    pub fn commit(self) -> std::result::Result<(), RenameFailure> {
        if self.files.is_empty() {
            return Ok(());
        }
        let total = self.files.len();
        let mut files = self.files.into_iter();
        for (renamed, mut file) in files.by_ref().enumerate() {
            if let Err(error) = file.rename_into_place() {
                drop(file);
                drop(files);
                // The rename error is what the caller needs; a second failure adds nothing.
                let _ = self.dir.sync();
                return Err(RenameFailure { renamed, error });
            }
        }
        self.dir.sync().map_err(|error| RenameFailure { renamed: total, error })
    }
}

/// Why a [`RenameGroup`] stopped, and how many of its temps were renamed before.
#[derive(Debug)]
pub struct RenameFailure {
    /// How many temps were renamed into place, in order.
    pub renamed: usize,
    /// The failed rename, or the failed directory fsync after every rename.
    pub error: Error,
}

impl From<RenameFailure> for Error {
    fn from(failure: RenameFailure) -> Self {
        failure.error
    }
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
    use std::path::Path;

    use super::*;
    use crate::dir::open_temp_dir;
    use crate::fs::{FaultyFs, Fs, RecordingFs};

    fn open_dir(root: &Path, fs: Arc<dyn Fs>) -> CacheDir {
        CacheDir::open_with(root, false, fs).unwrap()
    }

    fn perm_of(pending: &PendingFile) -> u32 {
        pending.dir().fs().fstat(pending.fd()).unwrap().perm
    }

    fn no_pause() -> impl FnMut(u64) -> Result<()> {
        |_| Ok(())
    }

    #[test]
    fn pending_file_lives_next_to_its_destination_under_the_temp_name() {
        let (tmp, dir) = open_temp_dir();

        let pending = PendingFile::create(&dir, "k.dat").unwrap();

        assert_eq!(pending.name(), "k.dat");
        assert_eq!(pending.path(), dir.path_of("k.dat"));
        assert_eq!(pending.temp_path(), dir.path_of("k.dat.tmp"));
        assert!(tmp.path().join("k.dat.tmp").is_file());
        assert!(!tmp.path().join("k.dat").exists());
    }

    #[test]
    fn new_temp_without_a_destination_gets_0666_under_the_umask() {
        let (tmp, dir) = open_temp_dir();
        // A file created with 0666 by the standard library shows what the umask leaves.
        let reference = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(tmp.path().join("reference"))
            .unwrap();
        let expected = reference.metadata().unwrap().permissions().mode() & 0o7777;

        let pending = PendingFile::create(&dir, "k.dat").unwrap();

        assert_eq!(perm_of(&pending), expected);
        assert_eq!(perm_of(&pending) & !0o666, 0);
    }

    #[test]
    fn new_temp_takes_exactly_the_destination_permission_bits() {
        let (tmp, dir) = open_temp_dir();
        for perm in [0o600, 0o640, 0o604, 0o751, 0o777] {
            let dest = tmp.path().join("k.dat");
            fs::write(&dest, b"old").unwrap();
            fs::set_permissions(&dest, fs::Permissions::from_mode(perm)).unwrap();

            let pending = PendingFile::create(&dir, "k.dat").unwrap();

            assert_eq!(perm_of(&pending), perm, "{perm:o}");
        }
    }

    #[test]
    fn a_symlinked_destination_does_not_lend_its_target_permissions() {
        let (tmp, dir) = open_temp_dir();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("target");
        fs::write(&target, b"x").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o777)).unwrap();
        symlink(&target, tmp.path().join("k.dat")).unwrap();

        let pending = PendingFile::create(&dir, "k.dat").unwrap();

        assert_eq!(perm_of(&pending) & 0o111, 0, "{:o}", perm_of(&pending));
    }

    #[test]
    fn a_planted_temp_symlink_is_removed_never_written_through() {
        let (tmp, dir) = open_temp_dir();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("precious");
        fs::write(&target, b"keep").unwrap();
        symlink(&target, tmp.path().join("k.dat.tmp")).unwrap();

        let pending = PendingFile::create(&dir, "k.dat").unwrap();
        pending
            .write_at(b"new", 0, ChunkBudget::new(16), &mut no_pause())
            .unwrap();

        assert_eq!(fs::read(&target).unwrap(), b"keep");
        let meta = fs::symlink_metadata(tmp.path().join("k.dat.tmp")).unwrap();
        assert!(meta.file_type().is_file());
    }

    #[test]
    fn lock_wait_interrupted_by_a_signal_is_retried() {
        let (tmp, _) = open_temp_dir();
        let faulty = Arc::new(FaultyFs::new(Op::Lock, 1, Errno::INTR.raw_os_error()));
        let dir = open_dir(tmp.path(), faulty.clone());

        let pending = PendingFile::create(&dir, "k.dat").unwrap();

        assert!(faulty.fired());
        assert_eq!(faulty.seen(), 2);
        assert!(pending.temp_path().exists());
    }

    #[test]
    fn failed_create_leaves_no_temp_behind() {
        let (tmp, _) = open_temp_dir();
        fs::write(tmp.path().join("k.dat"), b"old").unwrap();
        let faulty = Arc::new(FaultyFs::new(Op::Chmod, 1, Errno::PERM.raw_os_error()));
        let dir = open_dir(tmp.path(), faulty);

        let err = PendingFile::create(&dir, "k.dat").unwrap_err();

        match err {
            Error::Io { op, path, source } => {
                assert_eq!(op, Op::Chmod);
                assert_eq!(path, dir.path_of("k.dat.tmp"));
                assert_eq!(source.raw_os_error(), Some(Errno::PERM.raw_os_error()));
            }
            other => panic!("expected Error::Io, got {other:?}"),
        }
        assert!(!tmp.path().join("k.dat.tmp").exists());
        assert_eq!(fs::read(tmp.path().join("k.dat")).unwrap(), b"old");
    }

    #[test]
    fn illegal_destination_names_are_refused_before_any_call() {
        let (tmp, _) = open_temp_dir();
        let recording = Arc::new(RecordingFs::new());
        let dir = open_dir(tmp.path(), recording.clone());
        recording.clear();

        for name in ["", ".", "..", "a/b", "a\0b"] {
            let err = PendingFile::create(&dir, name).unwrap_err();
            assert!(matches!(err, Error::InvalidName { .. }), "{name:?}: {err}");
        }

        assert!(recording.calls().is_empty(), "{:?}", recording.calls());
    }

    /// A directory whose first file fsync fails with EIO, recorded.
    fn poisoning_dir(root: &Path) -> (CacheDir, Arc<RecordingFs>) {
        let faulty = Arc::new(FaultyFs::new(Op::Fsync, 1, Errno::IO.raw_os_error()));
        let recording = Arc::new(RecordingFs::wrapping(faulty));
        (open_dir(root, recording.clone()), recording)
    }

    fn count(recording: &RecordingFs, op: Op) -> usize {
        recording.calls().iter().filter(|call| call.op == op).count()
    }

    fn assert_fsync_error(err: &Error, temp: &Path) {
        match err {
            Error::Io { op, path, source } => {
                assert_eq!(*op, Op::Fsync);
                assert_eq!(path, temp);
                assert_eq!(source.raw_os_error(), Some(Errno::IO.raw_os_error()));
            }
            other => panic!("expected Error::Io, got {other:?}"),
        }
    }

    #[test]
    fn poisoned_temp_is_never_fsynced_again() {
        let (tmp, _) = open_temp_dir();
        let (dir, recording) = poisoning_dir(tmp.path());
        let mut pending = PendingFile::create(&dir, "k.dat").unwrap();

        assert_fsync_error(&pending.sync().unwrap_err(), &pending.temp_path());
        assert_fsync_error(&pending.sync().unwrap_err(), &pending.temp_path());
        assert_fsync_error(&pending.commit(true).unwrap_err(), &pending.temp_path());

        assert_eq!(count(&recording, Op::Fsync), 1);
    }

    #[test]
    fn poisoned_temp_refuses_to_be_renamed() {
        let (tmp, _) = open_temp_dir();
        fs::write(tmp.path().join("k.dat"), b"old").unwrap();
        let (dir, recording) = poisoning_dir(tmp.path());
        let mut pending = PendingFile::create(&dir, "k.dat").unwrap();
        pending
            .write_at(b"new", 0, ChunkBudget::new(16), &mut no_pause())
            .unwrap();
        pending.sync().unwrap_err();

        let err = pending.commit(false).unwrap_err();

        assert_fsync_error(&err, &pending.temp_path());
        assert_eq!(count(&recording, Op::Rename), 0);
        drop(pending);
        assert_eq!(fs::read(tmp.path().join("k.dat")).unwrap(), b"old");
        assert!(!tmp.path().join("k.dat.tmp").exists());
    }

    #[test]
    fn poisoned_temp_cannot_become_a_closed_temp() {
        let (tmp, _) = open_temp_dir();
        let (dir, _recording) = poisoning_dir(tmp.path());
        let pending = PendingFile::create(&dir, "k.dat").unwrap();
        let guard = Arc::new(dir.lock_key("k").unwrap());

        let err = pending.close_synced(guard).unwrap_err();

        assert_fsync_error(&err, &dir.path_of("k.dat.tmp"));
        assert!(!tmp.path().join("k.dat.tmp").exists());
    }

    #[test]
    fn dropping_an_uncommitted_temp_removes_it_and_keeps_the_destination() {
        let (tmp, dir) = open_temp_dir();
        fs::write(tmp.path().join("k.dat"), b"old").unwrap();
        let pending = PendingFile::create(&dir, "k.dat").unwrap();
        pending
            .write_at(b"new", 0, ChunkBudget::new(16), &mut no_pause())
            .unwrap();
        assert!(tmp.path().join("k.dat.tmp").exists());

        drop(pending);

        assert!(!tmp.path().join("k.dat.tmp").exists());
        assert_eq!(fs::read(tmp.path().join("k.dat")).unwrap(), b"old");
    }

    #[test]
    fn dropping_a_committed_file_only_closes_it() {
        let (tmp, _) = open_temp_dir();
        let recording = Arc::new(RecordingFs::new());
        let dir = open_dir(tmp.path(), recording.clone());
        let mut pending = PendingFile::create(&dir, "k.dat").unwrap();
        pending
            .write_at(b"new", 0, ChunkBudget::new(16), &mut no_pause())
            .unwrap();
        pending.commit(false).unwrap();
        recording.clear();

        drop(pending);

        assert!(recording.calls().is_empty(), "{:?}", recording.calls());
        assert_eq!(fs::read(tmp.path().join("k.dat")).unwrap(), b"new");
        assert!(!tmp.path().join("k.dat.tmp").exists());
    }

    #[test]
    fn dropping_an_uncommitted_closed_temp_removes_it() {
        let (tmp, dir) = open_temp_dir();
        let guard = Arc::new(dir.lock_key("k").unwrap());
        let pending = PendingFile::create(&dir, "k.dat").unwrap();

        let closed = pending.close_synced(guard).unwrap();
        assert_eq!(closed.name(), "k.dat");
        assert!(tmp.path().join("k.dat.tmp").exists());
        drop(closed);

        assert!(!tmp.path().join("k.dat.tmp").exists());
        assert!(!tmp.path().join("k.dat").exists());
    }

    #[test]
    fn empty_rename_group_makes_no_call() {
        let (tmp, _) = open_temp_dir();
        let recording = Arc::new(RecordingFs::new());
        let dir = open_dir(tmp.path(), recording.clone());
        recording.clear();
        let group = RenameGroup::new(&dir);
        assert!(group.is_empty());

        group.commit().unwrap();

        assert!(recording.calls().is_empty(), "{:?}", recording.calls());
    }

    #[test]
    fn creating_a_temp_a_live_writer_holds_waits_until_that_writer_is_done() {
        let (tmp, dir) = open_temp_dir();
        let mut first = PendingFile::create(&dir, "k.dat").unwrap();
        first.write_all_at(b"first", 0).unwrap();
        let (created, waited) = std::sync::mpsc::channel();

        std::thread::scope(|scope| {
            let dir = &dir;
            let second = scope.spawn(move || {
                let second = PendingFile::create(dir, "k.dat");
                created.send(()).unwrap();
                second
            });
            assert!(
                waited.recv_timeout(std::time::Duration::from_millis(200)).is_err(),
                "created while the first writer held the temp"
            );
            first.commit(false).unwrap();
            drop(first);
            let second = second.join().unwrap().unwrap();

            assert_eq!(fs::read(tmp.path().join("k.dat")).unwrap(), b"first");
            assert_eq!(fs::read(tmp.path().join("k.dat.tmp")).unwrap(), b"", "a fresh temp");
            drop(second);
        });
        assert!(!tmp.path().join("k.dat.tmp").exists());
    }
}
