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
