//! The one error type of the core: what failed, on which file, with the OS error kept whole.
//!
//! Nothing here decides how an error looks to a user; the binding maps each variant once.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// The filesystem step that failed (also the name the fault seam counts calls under).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Opening an existing file or directory.
    Open,
    /// Creating a temp file (`O_CREAT|O_EXCL`).
    Create,
    /// Creating a directory.
    Mkdir,
    /// Reserving space (`fallocate`) or extending a file.
    Reserve,
    /// Writing data (`pwrite`).
    Write,
    /// Reading data (`pread`).
    Read,
    /// `fsync` of a file.
    Fsync,
    /// `fsync` of a directory.
    DirFsync,
    /// `renameat`.
    Rename,
    /// `unlinkat`.
    Unlink,
    /// `fstat` / `fstatat`.
    Stat,
    /// `flock`.
    Lock,
    /// `fchmod`.
    Chmod,
    /// `FICLONERANGE` or `copy_file_range`.
    Copy,
    /// `mmap` / `msync`.
    Map,
    /// Listing a directory.
    List,
}

impl Op {
    /// Every operation, in a stable order (the fault seam reports counts in this order).
    pub const ALL: [Op; 16] = [
        Op::Open,
        Op::Create,
        Op::Mkdir,
        Op::Reserve,
        Op::Write,
        Op::Read,
        Op::Fsync,
        Op::DirFsync,
        Op::Rename,
        Op::Unlink,
        Op::Stat,
        Op::Lock,
        Op::Chmod,
        Op::Copy,
        Op::Map,
        Op::List,
    ];

    /// The seam name of the operation (`"dir_fsync"`, `"create"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Op::Open => "open",
            Op::Create => "create",
            Op::Mkdir => "mkdir",
            Op::Reserve => "reserve",
            Op::Write => "write",
            Op::Read => "read",
            Op::Fsync => "fsync",
            Op::DirFsync => "dir_fsync",
            Op::Rename => "rename",
            Op::Unlink => "unlink",
            Op::Stat => "stat",
            Op::Lock => "lock",
            Op::Chmod => "chmod",
            Op::Copy => "copy",
            Op::Map => "map",
            Op::List => "list",
        }
    }

    /// Looks an operation up by its seam name.
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }

    /// Position in [`Op::ALL`].
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::DirFsync => "dir fsync",
            other => other.name(),
        })
    }
}

/// Everything the core can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed; `source` keeps the errno.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: Op,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `renameat` failed; both names are kept for `filename` / `filename2`.
    #[error("rename {} -> {}: {source}", from.display(), to.display())]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A name that is not a single path segment.
    #[error("invalid artefact name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// A `.npy` header that cannot be decoded (or encoded).
    #[error("{}: invalid .npy header: {reason}", path.display())]
    InvalidHeader { path: PathBuf, reason: String },
    /// A file or a source whose size is not what the operation needs.
    #[error("{}: expected {expected} bytes, found {actual}", path.display())]
    SizeMismatch { path: PathBuf, expected: u64, actual: u64 },
    /// A size computation overflowed.
    #[error("size does not fit in 64 bits")]
    SizeOverflow,
    /// The caller's between-chunks callback asked to stop; the temp has been removed.
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    /// A failed system call `op` on `path`.
    pub fn io(op: Op, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The OS errno, when the error carries one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } | Error::Rename { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Shorthand for core results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `a + b` or [`Error::SizeOverflow`].
pub(crate) fn add(a: u64, b: u64) -> Result<u64> {
    a.checked_add(b).ok_or(Error::SizeOverflow)
}

/// `n` as `usize` or [`Error::SizeOverflow`].
pub(crate) fn to_usize(n: u64) -> Result<usize> {
    usize::try_from(n).map_err(|_| Error::SizeOverflow)
}

/// `n` as `u64` (lossless on every supported target).
pub(crate) fn to_u64(n: usize) -> u64 {
    n as u64
}
