//! Reserving disk space before data moves, so a full disk is an error and never a SIGBUS.
//!
//! `fallocate(fd, 0, 0, len)` allocates the blocks and sets the file size in one call; ENOSPC,
//! EFBIG and EDQUOT surface here, before any byte is written. Reservation is best-effort on
//! filesystems without `fallocate` (EOPNOTSUPP): we then rely on `pwrite` to report ENOSPC and
//! never emulate the reservation by writing zeros.

use std::os::fd::BorrowedFd;
use std::path::Path;

use rustix::io::Errno;

use crate::error::{Error, Op, Result};
use crate::fs::Fs;

/// Whether the space is now allocated or the filesystem could not reserve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// The blocks are allocated and the file is at least `len` bytes long.
    Reserved,
    /// The filesystem does not support `fallocate`; the file size is unchanged.
    Unsupported,
}

/// Reserves `len` bytes at the start of `fd`. Zero length does nothing.
///
/// # Errors
/// [`Error::Io`] with [`Op::Reserve`] and the real errno (ENOSPC, EFBIG, EDQUOT, ...).
pub fn reserve(fs: &dyn Fs, fd: BorrowedFd<'_>, path: &Path, len: u64) -> Result<Reservation> {
    if len == 0 {
        return Ok(Reservation::Reserved);
    }
    match fs.fallocate(fd, len) {
        Ok(()) => Ok(Reservation::Reserved),
        Err(err) if err.raw_os_error() == Some(Errno::OPNOTSUPP.raw_os_error()) => Ok(Reservation::Unsupported),
        Err(err) => Err(Error::io(Op::Reserve, path, err)),
    }
}

/// Reserves `len` bytes and makes sure the file is exactly that long even where `fallocate`
/// is unsupported (the file is new and empty, so `ftruncate` only extends it).
///
/// # Errors
/// [`Error::Io`] with [`Op::Reserve`].
pub fn reserve_and_size(fs: &dyn Fs, fd: BorrowedFd<'_>, path: &Path, len: u64) -> Result<()> {
    if len == 0 || reserve(fs, fd, path, len)? == Reservation::Reserved {
        return Ok(());
    }
    fs.truncate(fd, len).map_err(|err| Error::io(Op::Reserve, path, err))
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::fs::File;
    use std::os::fd::AsFd;
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::fs::{FaultyFs, RealFs, RecordingFs};

    fn new_file() -> (tempfile::TempDir, File, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("k.dat.tmp");
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        (tmp, file, path)
    }

    fn len_of(file: &File) -> u64 {
        file.metadata().unwrap().len()
    }

    #[test]
    fn zero_length_reserves_nothing_and_makes_no_call() {
        let (_tmp, file, path) = new_file();
        let recording = RecordingFs::new();

        assert_eq!(
            reserve(&recording, file.as_fd(), &path, 0).unwrap(),
            Reservation::Reserved
        );
        reserve_and_size(&recording, file.as_fd(), &path, 0).unwrap();

        assert!(recording.calls().is_empty(), "{:?}", recording.calls());
        assert_eq!(len_of(&file), 0);
    }

    #[test]
    fn reservation_allocates_and_sizes_the_file() {
        let (_tmp, file, path) = new_file();

        reserve_and_size(&RealFs, file.as_fd(), &path, 10_000).unwrap();

        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), 10_000);
        // Allocated blocks, not a hole: st_blocks counts 512-byte units.
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 >= 10_000);
    }

    #[test]
    fn unsupported_fallocate_is_not_an_error_and_leaves_the_size_alone() {
        let (_tmp, file, path) = new_file();
        let faulty = FaultyFs::new(Op::Reserve, 1, Errno::OPNOTSUPP.raw_os_error());

        let outcome = reserve(&faulty, file.as_fd(), &path, 4096).unwrap();

        assert!(faulty.fired());
        assert_eq!(outcome, Reservation::Unsupported);
        assert_eq!(len_of(&file), 0);
    }

    #[test]
    fn unsupported_fallocate_falls_back_to_sizing_the_file() {
        let (_tmp, file, path) = new_file();
        let faulty = Arc::new(FaultyFs::new(Op::Reserve, 1, Errno::OPNOTSUPP.raw_os_error()));
        let recording = RecordingFs::wrapping(faulty.clone());

        reserve_and_size(&recording, file.as_fd(), &path, 12_345).unwrap();

        assert!(faulty.fired());
        assert_eq!(len_of(&file), 12_345);
        let outcomes: Vec<(Op, bool)> = recording.calls().iter().map(|call| (call.op, call.ok)).collect();
        assert_eq!(outcomes, [(Op::Reserve, false), (Op::Reserve, true)]);
    }

    fn assert_reserve_error(err: Error, path: &Path, errno: Errno) {
        match err {
            Error::Io { op, path: at, source } => {
                assert_eq!(op, Op::Reserve);
                assert_eq!(at, path);
                assert_eq!(source.raw_os_error(), Some(errno.raw_os_error()));
            }
            other => panic!("expected Error::Io, got {other:?}"),
        }
    }

    #[test]
    fn full_disk_quota_and_too_big_surface_with_op_path_and_errno() {
        for errno in [Errno::NOSPC, Errno::FBIG, Errno::DQUOT] {
            let (_tmp, file, path) = new_file();
            let faulty = FaultyFs::new(Op::Reserve, 1, errno.raw_os_error());

            let err = reserve_and_size(&faulty, file.as_fd(), &path, 1 << 20).unwrap_err();

            assert_reserve_error(err, &path, errno);
            assert_eq!(faulty.seen(), 1, "{errno:?}: no truncate after a real failure");
            assert_eq!(len_of(&file), 0);
        }
    }

    #[test]
    fn failed_fallback_truncate_surfaces_as_a_reserve_error() {
        let (_tmp, file, path) = new_file();
        let unsupported = Arc::new(FaultyFs::new(Op::Reserve, 1, Errno::OPNOTSUPP.raw_os_error()));
        let faulty = FaultyFs::wrapping(unsupported, Op::Reserve, 2, Errno::FBIG.raw_os_error());

        let err = reserve_and_size(&faulty, file.as_fd(), &path, 1 << 20).unwrap_err();

        assert_reserve_error(err, &path, Errno::FBIG);
    }

    #[test]
    fn a_length_no_file_can_have_is_a_reserve_error_not_a_fallback() {
        let (_tmp, file, path) = new_file();

        let err = reserve_and_size(&RealFs, file.as_fd(), &path, u64::MAX).unwrap_err();

        assert_reserve_error(err, &path, Errno::INVAL);
        assert_eq!(len_of(&file), 0);
    }
}
