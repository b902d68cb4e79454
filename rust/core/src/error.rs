//! The one error type of the core: what failed, on which file, with the OS error kept whole.
//!
//! Nothing here decides how an error looks to a user; the binding maps each variant once.

use std::fmt;
use std::io;
use std::path::PathBuf;

use rustix::io::Errno;

use crate::npy::HeaderError;

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
    /// Starting the writeback of a written range (`sync_file_range`), a hint ahead of an fsync.
    Writeback,
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
    pub const ALL: [Op; 17] = [
        Op::Open,
        Op::Create,
        Op::Mkdir,
        Op::Reserve,
        Op::Write,
        Op::Read,
        Op::Fsync,
        Op::Writeback,
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
            Op::Writeback => "writeback",
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
    InvalidHeader { path: PathBuf, reason: HeaderError },
    /// A strided source whose shape, strides and memory do not describe an array.
    #[error("invalid array layout: {reason}")]
    InvalidLayout { reason: &'static str },
    /// A key staged twice in one group commit.
    #[error("key {key:?} is already staged in this batch")]
    AlreadyStaged { key: String },
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

    /// Whether the call found no file of that name (`ENOENT`): a reader takes that as a miss.
    pub fn is_missing(&self) -> bool {
        matches!(self, Error::Io { source, .. } | Error::Rename { source, .. } if is_gone(source))
    }

    /// Whether the OS refused the call for lack of permission or because the file system is
    /// read-only (EPERM, EACCES, EROFS): what a reader of a directory it may not write sees.
    pub fn is_permission_refusal(&self) -> bool {
        [Errno::PERM, Errno::ACCESS, Errno::ROFS]
            .iter()
            .any(|errno| self.raw_os_error() == Some(errno.raw_os_error()))
    }
}

/// Shorthand for core results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether a failed call found no file of that name (`ENOENT`): it is gone, which whoever removes
/// or inspects leftovers takes as nothing to do.
pub(crate) fn is_gone(err: &io::Error) -> bool {
    err.raw_os_error() == Some(Errno::NOENT.raw_os_error())
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn every_op_name_round_trips_through_from_name() {
        for op in Op::ALL {
            assert_eq!(Op::from_name(op.name()), Some(op), "{op:?}");
        }
    }

    #[test]
    fn unknown_or_display_spelled_names_are_not_ops() {
        for name in ["", "Open", "dir fsync", "fsync_dir", "write ", "mmap"] {
            assert_eq!(Op::from_name(name), None, "{name:?}");
        }
    }

    #[test]
    fn op_names_are_distinct() {
        let mut names: Vec<&str> = Op::ALL.iter().map(|op| op.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Op::ALL.len());
    }

    #[test]
    fn op_index_is_its_position_in_all() {
        for (position, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(op.index(), position, "{op:?}");
        }
    }

    #[test]
    fn op_display_spells_dir_fsync_with_a_space_and_the_rest_by_seam_name() {
        assert_eq!(Op::DirFsync.to_string(), "dir fsync");
        for op in Op::ALL.into_iter().filter(|op| *op != Op::DirFsync) {
            assert_eq!(op.to_string(), op.name());
        }
    }

    #[test]
    fn io_error_keeps_the_raw_errno_op_and_path() {
        let err = Error::io(Op::Reserve, "/cache/k.npy.tmp", io::Error::from_raw_os_error(28));

        assert_eq!(err.raw_os_error(), Some(28));
        match &err {
            Error::Io { op, path, .. } => {
                assert_eq!(*op, Op::Reserve);
                assert_eq!(path, &PathBuf::from("/cache/k.npy.tmp"));
            }
            other => panic!("expected Error::Io, got {other:?}"),
        }
    }

    #[test]
    fn io_error_display_names_the_op_the_path_and_the_os_error() {
        let err = Error::io(Op::DirFsync, "/cache", io::Error::from_raw_os_error(5));

        let text = err.to_string();

        assert!(text.starts_with("dir fsync /cache: "), "{text}");
        assert!(text.contains("os error 5"), "{text}");
    }

    #[test]
    fn rename_error_names_both_paths_and_keeps_the_errno() {
        let err = Error::Rename {
            from: PathBuf::from("/c/k.npy.tmp"),
            to: PathBuf::from("/c/k.npy"),
            source: io::Error::from_raw_os_error(18),
        };

        assert_eq!(err.raw_os_error(), Some(18));
        assert!(
            err.to_string().starts_with("rename /c/k.npy.tmp -> /c/k.npy: "),
            "{err}"
        );
    }

    #[test]
    fn errors_without_a_system_call_carry_no_errno() {
        let errors = [
            Error::InvalidName {
                name: "a/b".to_owned(),
                reason: "contains '/'",
            },
            Error::InvalidHeader {
                path: PathBuf::from("/c/k.npy"),
                reason: HeaderError::BadMagic,
            },
            Error::AlreadyStaged { key: "k".to_owned() },
            Error::InvalidLayout {
                reason: "an element lies outside the buffer",
            },
            Error::SizeMismatch {
                path: PathBuf::from("/c/k.dat"),
                expected: 10,
                actual: 3,
            },
            Error::SizeOverflow,
            Error::Interrupted,
        ];
        for err in errors {
            assert_eq!(err.raw_os_error(), None, "{err}");
        }
    }

    #[test]
    fn io_error_without_an_errno_reports_none() {
        let err = Error::io(Op::Map, "/c/k.dat", io::Error::other("null mapping"));

        assert_eq!(err.raw_os_error(), None);
    }

    #[test]
    fn size_mismatch_display_states_expected_and_actual() {
        let err = Error::SizeMismatch {
            path: PathBuf::from("/c/k.dat"),
            expected: 4096,
            actual: 100,
        };

        assert_eq!(err.to_string(), "/c/k.dat: expected 4096 bytes, found 100");
    }

    #[test]
    fn permission_refusals_are_eperm_eacces_and_erofs_only() {
        let refusal = |errno: Errno| Error::io(Op::Unlink, "/c/k.npy.tmp", io::Error::from(errno));
        for errno in [Errno::PERM, Errno::ACCESS, Errno::ROFS] {
            assert!(refusal(errno).is_permission_refusal(), "{errno:?}");
        }
        for errno in [Errno::IO, Errno::NOENT, Errno::BUSY, Errno::NOSPC] {
            assert!(!refusal(errno).is_permission_refusal(), "{errno:?}");
        }
        assert!(!Error::SizeOverflow.is_permission_refusal());
    }

    #[test]
    fn invalid_header_display_names_the_path_and_the_typed_reason() {
        let err = Error::InvalidHeader {
            path: PathBuf::from("/c/k.npy"),
            reason: HeaderError::UnsupportedVersion { major: 4, minor: 0 },
        };

        assert_eq!(
            err.to_string(),
            "/c/k.npy: invalid .npy header: unsupported format version 4.0"
        );
    }
}
