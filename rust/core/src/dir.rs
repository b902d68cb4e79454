//! `CacheDir`: an open directory descriptor; every artefact operation is (this directory,
//! one name).
//!
//! Names are single path segments, checked here before any system call. A symlinked root is
//! resolved once, when the directory is opened; afterwards every call is fd-relative, so a
//! rename of the root or a planted link cannot redirect our writes.
//!
//! The directory also carries the descriptor of its key lock file (see [`crate::keylock`]),
//! opened on the first lock and shared by every clone.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rustix::fs::OFlags;
use rustix::io::Errno;

use crate::checked::{add, to_u64};
use crate::copy::{self, Between, ChunkBudget};
use crate::error::{Error, Op, Result, is_gone};
use crate::fs::{Fs, RealFs};
use crate::keylock::LockFile;
use crate::names::validate_name;

/// Mode of directories we create (the umask applies).
const DIR_MODE: u32 = 0o777;

/// An open cache directory. Cheap to clone; the descriptor closes with the last clone.
#[derive(Debug, Clone)]
pub struct CacheDir {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    fd: OwnedFd,
    path: PathBuf,
    fs: Arc<dyn Fs>,
    lock_file: Mutex<Option<Arc<LockFile>>>,
}

fn utf8<'a>(path: &'a Path, component: &'a std::ffi::OsStr) -> Result<&'a str> {
    component.to_str().ok_or_else(|| Error::InvalidName {
        name: path.display().to_string(),
        reason: "path is not valid UTF-8",
    })
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY.union(OFlags::CLOEXEC).union(OFlags::RDONLY);

impl CacheDir {
    /// Opens `path` on the real filesystem; see [`CacheDir::open_with`].
    ///
    /// # Errors
    /// As [`CacheDir::open_with`].
    pub fn open(path: &Path, create: bool) -> Result<Self> {
        Self::open_with(path, create, Arc::new(RealFs))
    }

    /// Opens the directory `path` through `fs`. With `create`, missing directories are made
    /// one by one and each new directory is made durable by fsyncing its parent.
    ///
    /// # Errors
    /// [`Error::Io`] with [`Op::Open`], [`Op::Mkdir`] or [`Op::DirFsync`];
    /// [`Error::InvalidName`] for a path that is not UTF-8.
    pub fn open_with(path: &Path, create: bool, fs: Arc<dyn Fs>) -> Result<Self> {
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|err| Error::io(Op::Open, path, err))?
                .join(path)
        };
        let fd = if create {
            open_creating(fs.as_ref(), &absolute)?
        } else {
            let name = utf8(&absolute, absolute.as_os_str())?;
            fs.open(rustix::fs::CWD, name, DIR_FLAGS, 0)
                .map_err(|err| Error::io(Op::Open, &absolute, err))?
        };
        let resolved = resolved_path(fd.as_fd()).unwrap_or(absolute);
        Ok(Self {
            inner: Arc::new(Inner {
                fd,
                path: resolved,
                fs,
                lock_file: Mutex::new(None),
            }),
        })
    }

    /// The resolved path of the directory (for messages).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The path of `name` inside this directory (for messages).
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.inner.path.join(name)
    }

    /// The filesystem seam this directory uses.
    pub fn fs(&self) -> &dyn Fs {
        self.inner.fs.as_ref()
    }

    /// The directory descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inner.fd.as_fd()
    }

    /// Whether this process may not create files here (permissions or a read-only mount): a
    /// reader then maps payloads read-only rather than copy-on-write.
    ///
    /// # Errors
    /// [`Error::Io`] with [`Op::Stat`] when the mount cannot be queried.
    pub fn refuses_writes(&self) -> Result<bool> {
        self.fs()
            .refuses_writes(self.fd())
            .map_err(|err| Error::io(Op::Stat, self.path(), err))
    }

    /// `fsync` of the directory itself.
    ///
    /// # Errors
    /// [`Error::Io`] with [`Op::DirFsync`].
    pub fn sync(&self) -> Result<()> {
        self.fs()
            .fsync_dir(self.fd())
            .map_err(|err| Error::io(Op::DirFsync, self.path(), err))
    }

    /// The key lock file of this directory, opened (and created) on first use; reopened in a
    /// forked child, whose inherited description belongs to its parent.
    pub(crate) fn lock_file(&self) -> Result<Arc<LockFile>> {
        let mut slot = self.inner.lock_file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(file) = slot.as_ref().filter(|file| file.is_current()) {
            return Ok(Arc::clone(file));
        }
        let file = LockFile::open(self)?;
        *slot = Some(Arc::clone(&file));
        Ok(file)
    }

    /// Opens `name` for reading (following a symlink: reads of adopted entries are allowed).
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::Io`] with [`Op::Open`].
    pub fn open_read(&self, name: &str) -> Result<OwnedFd> {
        validate_name(name)?;
        self.fs()
            .open(self.fd(), name, OFlags::RDONLY | OFlags::CLOEXEC, 0)
            .map_err(|err| Error::io(Op::Open, self.path_of(name), err))
    }

    /// The size of an open file.
    ///
    /// # Errors
    /// [`Error::Io`] with [`Op::Stat`].
    pub fn file_len(&self, fd: BorrowedFd<'_>, name: &str) -> Result<u64> {
        self.fs()
            .fstat(fd)
            .map(|stat| stat.len)
            .map_err(|err| Error::io(Op::Stat, self.path_of(name), err))
    }

    /// Opens `name` for reading and checks that it holds `len` bytes from `offset`.
    ///
    /// # Errors
    /// As [`CacheDir::open_read`] and [`CacheDir::file_len`]; [`Error::SizeMismatch`] when the
    /// file is shorter than `offset + len`.
    pub fn open_holding(&self, name: &str, offset: u64, len: u64) -> Result<OwnedFd> {
        let fd = self.open_read(name)?;
        self.check_holds(name, self.file_len(fd.as_fd(), name)?, offset, len)?;
        Ok(fd)
    }

    /// Checks that `name`, `actual` bytes long, holds `len` bytes from `offset`.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`] when it is shorter than `offset + len`; [`Error::SizeOverflow`]
    /// when that end overflows.
    pub(crate) fn check_holds(&self, name: &str, actual: u64, offset: u64, len: u64) -> Result<()> {
        let needed = add(offset, len)?;
        if actual < needed {
            return Err(Error::SizeMismatch {
                path: self.path_of(name),
                expected: needed,
                actual,
            });
        }
        Ok(())
    }

    /// Reads the whole of the small file `name` (a sidecar): open, fstat, pread, close.
    ///
    /// # Errors
    /// As [`CacheDir::open_read`] and [`CacheDir::file_len`]; [`Error::Io`] with [`Op::Read`];
    /// [`Error::SizeMismatch`] when the file shrinks while it is read.
    pub fn read_file(&self, name: &str) -> Result<Vec<u8>> {
        let fd = self.open_read(name)?;
        let len = crate::checked::to_usize(self.file_len(fd.as_fd(), name)?)?;
        let mut bytes = vec![0u8; len];
        copy::read_exact_at(self.fs(), fd.as_fd(), &self.path_of(name), &mut bytes, 0)?;
        Ok(bytes)
    }

    /// Fills `dest` from `name` at `offset` with `pread` in pieces of `budget`, calling
    /// `between` between pieces.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`] when the file is shorter than `offset + dest.len()`,
    /// [`Error::Io`] for failed calls, or whatever `between` returns.
    pub fn read_into(
        &self,
        name: &str,
        offset: u64,
        dest: &mut [u8],
        budget: ChunkBudget,
        between: Between<'_>,
    ) -> Result<()> {
        let fd = self.open_holding(name, offset, to_u64(dest.len()))?;
        copy::read_chunked(
            self.fs(),
            fd.as_fd(),
            &self.path_of(name),
            dest,
            offset,
            budget,
            between,
        )
    }

    /// Unlinks each name (never following a symlink); a missing name is not an error.
    /// Returns the names that could not be unlinked, with their errors.
    ///
    /// With `durable`, the directory is fsynced once after the unlinks when at least one name
    /// was removed, so a removal the caller reports as done survives a power cut.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for any illegal name, before anything is unlinked. A failed
    /// directory fsync is [`Error::Io`] with [`Op::DirFsync`] when every unlink succeeded; when
    /// some failed, those failures are what the caller acts on and are returned instead.
    pub fn unlink_all<S: AsRef<str>>(&self, names: &[S], durable: bool) -> Result<Vec<(String, Error)>> {
        for name in names {
            validate_name(name.as_ref())?;
        }
        let mut failed = Vec::new();
        let mut removed_any = false;
        for name in names {
            let name = name.as_ref();
            match self.fs().unlink(self.fd(), name) {
                Ok(()) => removed_any = true,
                Err(err) if is_gone(&err) => {}
                Err(err) => failed.push((name.to_owned(), Error::io(Op::Unlink, self.path_of(name), err))),
            }
        }
        if durable && removed_any {
            match self.sync() {
                Err(err) if failed.is_empty() => return Err(err),
                Ok(()) | Err(_) => {}
            }
        }
        Ok(failed)
    }
}

/// Opens `absolute` component by component, creating what is missing.
fn open_creating(fs: &dyn Fs, absolute: &Path) -> Result<OwnedFd> {
    let mut current = fs
        .open(rustix::fs::CWD, "/", DIR_FLAGS, 0)
        .map_err(|err| Error::io(Op::Open, "/", err))?;
    let mut walked = PathBuf::from("/");
    for component in absolute.components() {
        let name = match component {
            Component::Normal(name) => utf8(absolute, name)?,
            Component::ParentDir => "..",
            Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
        };
        walked.push(name);
        current = match fs.open(current.as_fd(), name, DIR_FLAGS, 0) {
            Ok(fd) => fd,
            Err(err) if is_gone(&err) => create_child(fs, current.as_fd(), name, &walked)?,
            Err(err) => return Err(Error::io(Op::Open, &walked, err)),
        };
    }
    Ok(current)
}

/// Makes directory `name` in `parent`, fsyncs `parent` so the new entry is durable, opens it.
fn create_child(fs: &dyn Fs, parent: BorrowedFd<'_>, name: &str, path: &Path) -> Result<OwnedFd> {
    match fs.mkdir(parent, name, DIR_MODE) {
        Ok(()) => {
            let parent_path = path.parent().unwrap_or(path);
            fs.fsync_dir(parent)
                .map_err(|err| Error::io(Op::DirFsync, parent_path, err))?;
        }
        Err(err) if err.raw_os_error() == Some(Errno::EXIST.raw_os_error()) => {}
        Err(err) => return Err(Error::io(Op::Mkdir, path, err)),
    }
    fs.open(parent, name, DIR_FLAGS, 0)
        .map_err(|err| Error::io(Op::Open, path, err))
}

/// The path the kernel reports for `fd`. Outside the seam on purpose: it only names the
/// directory in messages, and the caller falls back to the path it was given.
fn resolved_path(fd: BorrowedFd<'_>) -> io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// A [`CacheDir`] on a fresh temporary directory (removed with the guard), for unit tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)] // A test that cannot make a temporary directory has nothing to test.
pub(crate) fn open_temp_dir() -> (tempfile::TempDir, CacheDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CacheDir::open(tmp.path(), false).unwrap();
    (tmp, dir)
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::fs::{Call, FaultyFs, RecordingFs};

    fn recorded(calls: &[Call]) -> Vec<(Op, String)> {
        calls.iter().map(|call| (call.op, call.name.clone())).collect()
    }

    #[test]
    fn open_with_create_makes_each_missing_directory_and_fsyncs_its_parent_first() {
        let tmp = tempfile::tempdir().unwrap();
        let recording = Arc::new(RecordingFs::new());
        let target = tmp.path().join("a").join("b").join("c");

        let dir = CacheDir::open_with(&target, true, recording.clone()).unwrap();

        assert!(target.is_dir());
        assert_eq!(dir.path(), fs::canonicalize(&target).unwrap());
        let calls = recording.calls();
        let after_root: Vec<(Op, String)> = recorded(&calls)
            .into_iter()
            .skip_while(|(op, name)| !(*op == Op::Mkdir && name == "a"))
            .collect();
        let expected: Vec<(Op, String)> = ["a", "b", "c"]
            .into_iter()
            .flat_map(|name| {
                [
                    (Op::Open, name.to_owned()),
                    (Op::Mkdir, name.to_owned()),
                    (Op::DirFsync, ".".to_owned()),
                    (Op::Open, name.to_owned()),
                ]
            })
            .skip(1)
            .collect();
        assert_eq!(after_root, expected);
        let failed: Vec<&Call> = calls.iter().filter(|call| !call.ok).collect();
        assert_eq!(failed.len(), 3, "one ENOENT open per missing directory: {failed:?}");
        assert!(failed.iter().all(|call| call.op == Op::Open));
    }

    #[test]
    fn open_with_create_on_an_existing_directory_makes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let recording = Arc::new(RecordingFs::new());

        CacheDir::open_with(tmp.path(), true, recording.clone()).unwrap();

        let calls = recording.calls();
        assert!(calls.iter().all(|call| call.op == Op::Open && call.ok), "{calls:?}");
    }

    #[test]
    fn open_without_create_refuses_a_missing_directory_with_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing");

        let err = CacheDir::open(&missing, false).unwrap_err();

        match err {
            Error::Io { op, path, source } => {
                assert_eq!(op, Op::Open);
                assert_eq!(path, missing);
                assert_eq!(source.raw_os_error(), Some(Errno::NOENT.raw_os_error()));
            }
            other => panic!("expected Error::Io, got {other:?}"),
        }
        assert!(!missing.exists());
    }

    #[test]
    fn failed_mkdir_names_the_directory_it_could_not_make() {
        let tmp = tempfile::tempdir().unwrap();
        let faulty = Arc::new(FaultyFs::new(Op::Mkdir, 2, Errno::ACCESS.raw_os_error()));
        let target = tmp.path().join("a").join("b").join("c");

        let err = CacheDir::open_with(&target, true, faulty).unwrap_err();

        match err {
            Error::Io { op, path, source } => {
                assert_eq!(op, Op::Mkdir);
                assert_eq!(path, tmp.path().join("a").join("b"));
                assert_eq!(source.raw_os_error(), Some(Errno::ACCESS.raw_os_error()));
            }
            other => panic!("expected Error::Io, got {other:?}"),
        }
        assert!(tmp.path().join("a").is_dir());
        assert!(!tmp.path().join("a").join("b").exists());
    }

    #[test]
    fn failed_parent_fsync_after_mkdir_is_reported_on_the_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let faulty = Arc::new(FaultyFs::new(Op::DirFsync, 1, Errno::IO.raw_os_error()));
        let target = tmp.path().join("new");

        let err = CacheDir::open_with(&target, true, faulty).unwrap_err();

        match err {
            Error::Io { op, path, source } => {
                assert_eq!(op, Op::DirFsync);
                assert_eq!(path, tmp.path());
                assert_eq!(source.raw_os_error(), Some(Errno::IO.raw_os_error()));
            }
            other => panic!("expected Error::Io, got {other:?}"),
        }
    }

    #[test]
    fn a_symlinked_root_is_resolved_once_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        symlink(&real, &link).unwrap();

        let dir = CacheDir::open(&link, false).unwrap();

        assert_eq!(dir.path(), fs::canonicalize(&real).unwrap());
    }

    #[test]
    fn path_of_joins_the_name_to_the_resolved_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CacheDir::open(tmp.path(), false).unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();

        assert_eq!(dir.path_of("k.npy"), root.join("k.npy"));
        assert_eq!(dir.path_of("θ.meta.json.tmp"), root.join("θ.meta.json.tmp"));
    }

    #[test]
    fn unlink_all_removes_present_names_and_ignores_missing_ones() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("a.npy"), b"a").unwrap();
        fs::write(tmp.path().join("b.npy"), b"b").unwrap();
        let dir = CacheDir::open(tmp.path(), false).unwrap();

        let failed = dir.unlink_all(&["a.npy", "gone.npy", "b.npy", "a.npy"], false).unwrap();

        assert!(failed.is_empty(), "{failed:?}");
        assert!(!tmp.path().join("a.npy").exists());
        assert!(!tmp.path().join("b.npy").exists());
    }

    #[test]
    fn durable_unlink_all_fsyncs_the_directory_once_after_the_unlinks() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("a.npy"), b"a").unwrap();
        fs::write(tmp.path().join("b.npy"), b"b").unwrap();
        let recording = Arc::new(RecordingFs::new());
        let dir = CacheDir::open_with(tmp.path(), false, recording.clone()).unwrap();
        recording.clear();

        let failed = dir.unlink_all(&["a.npy", "gone.npy", "b.npy"], true).unwrap();

        assert!(failed.is_empty(), "{failed:?}");
        let ops: Vec<Op> = recording.calls().iter().map(|call| call.op).collect();
        assert_eq!(ops, [Op::Unlink, Op::Unlink, Op::Unlink, Op::DirFsync]);
    }

    #[test]
    fn durable_unlink_all_skips_the_fsync_when_nothing_was_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let recording = Arc::new(RecordingFs::new());
        let dir = CacheDir::open_with(tmp.path(), false, recording.clone()).unwrap();
        recording.clear();

        assert!(dir.unlink_all(&["gone.npy"], true).unwrap().is_empty());

        assert!(recording.calls().iter().all(|call| call.op == Op::Unlink));
    }

    #[test]
    fn durable_unlink_all_raises_a_failed_directory_fsync_after_unlinking() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("a.npy"), b"a").unwrap();
        let faulty = Arc::new(FaultyFs::new(Op::DirFsync, 1, Errno::IO.raw_os_error()));
        let dir = CacheDir::open_with(tmp.path(), false, faulty).unwrap();

        let err = dir.unlink_all(&["a.npy"], true).unwrap_err();

        assert!(matches!(err, Error::Io { op: Op::DirFsync, .. }), "{err}");
        assert_eq!(err.raw_os_error(), Some(Errno::IO.raw_os_error()));
        assert!(!tmp.path().join("a.npy").exists());
    }

    #[test]
    fn durable_unlink_all_reports_unlink_failures_over_a_failed_fsync() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("sub.npy")).unwrap();
        fs::write(tmp.path().join("b.npy"), b"b").unwrap();
        let faulty = Arc::new(FaultyFs::new(Op::DirFsync, 1, Errno::IO.raw_os_error()));
        let dir = CacheDir::open_with(tmp.path(), false, faulty).unwrap();

        let failed = dir.unlink_all(&["sub.npy", "b.npy"], true).unwrap();

        assert_eq!(
            failed.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(),
            ["sub.npy"]
        );
    }

    #[test]
    fn unlink_all_checks_every_name_before_removing_any() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("a.npy"), b"a").unwrap();
        let dir = CacheDir::open(tmp.path(), false).unwrap();

        let err = dir.unlink_all(&["a.npy", "../escape"], false).unwrap_err();

        assert!(matches!(err, Error::InvalidName { .. }), "{err}");
        assert!(tmp.path().join("a.npy").exists());
    }

    #[test]
    fn unlink_all_reports_names_it_cannot_remove_and_goes_on() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("sub.npy")).unwrap();
        fs::write(tmp.path().join("b.npy"), b"b").unwrap();
        let dir = CacheDir::open(tmp.path(), false).unwrap();

        let failed = dir.unlink_all(&["sub.npy", "b.npy"], false).unwrap();

        assert_eq!(failed.len(), 1);
        let (name, err) = &failed[0];
        assert_eq!(name, "sub.npy");
        match err {
            Error::Io { op, path, source } => {
                assert_eq!(*op, Op::Unlink);
                assert_eq!(path, &dir.path_of("sub.npy"));
                assert_eq!(source.raw_os_error(), Some(Errno::ISDIR.raw_os_error()));
            }
            other => panic!("expected Error::Io, got {other:?}"),
        }
        assert!(tmp.path().join("sub.npy").is_dir());
        assert!(!tmp.path().join("b.npy").exists());
    }

    #[test]
    fn a_writable_directory_is_not_refused_for_writes() {
        // The refusals (dropped capabilities, a read-only bind mount, an unprivileged user) are
        // set up by tests/reliability/test_read_only_directory.py, which a unit test cannot do.
        let (_tmp, dir) = open_temp_dir();
        assert!(!dir.refuses_writes().unwrap());
    }

    #[test]
    fn unlink_all_removes_a_symlink_and_not_its_target() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("precious");
        fs::write(&target, b"keep").unwrap();
        symlink(&target, tmp.path().join("k.npy")).unwrap();
        let dir = CacheDir::open(tmp.path(), false).unwrap();

        assert!(dir.unlink_all(&["k.npy"], false).unwrap().is_empty());

        assert!(fs::symlink_metadata(tmp.path().join("k.npy")).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"keep");
    }

    #[test]
    fn read_into_refuses_a_window_past_the_end_before_reading() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("k.dat"), b"0123456789").unwrap();
        let dir = CacheDir::open(tmp.path(), false).unwrap();
        let mut dest = [0u8; 4];

        let err = dir
            .read_into("k.dat", 8, &mut dest, ChunkBudget::new(4), &mut |_| Ok(()))
            .unwrap_err();

        match err {
            Error::SizeMismatch { path, expected, actual } => {
                assert_eq!(path, dir.path_of("k.dat"));
                assert_eq!((expected, actual), (12, 10));
            }
            other => panic!("expected SizeMismatch, got {other:?}"),
        }
        assert_eq!(dest, [0; 4]);
        dir.read_into("k.dat", 6, &mut dest, ChunkBudget::new(4), &mut |_| Ok(()))
            .unwrap();
        assert_eq!(&dest, b"6789");
    }
}
