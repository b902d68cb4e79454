//! Reading a stored file back to check it: one sequential pass that hashes every byte and leaves
//! the page cache as it found it.
//!
//! Verification exists for stores larger than RAM, so it must not push the working set of other
//! programs (or of this one) out of memory: it maps one window at a time (resident memory does
//! not grow with the file) and drops again exactly the pages it brought in
//! ([`CacheUse::LeaveAsFound`]). It never writes.

use std::os::fd::AsFd;

use crate::checked::to_u64;
use crate::checksum::{Digest, Hasher};
use crate::copy::{Between, PIECE_CAP};
use crate::dir::CacheDir;
use crate::error::Result;
use crate::sequential::{self, CacheUse, Source};

impl CacheDir {
    /// The checksum of the whole file `name` (see [`crate::checksum`]) and its length, read
    /// sequentially ([`sequential::read_sequential`]). `between` runs about every
    /// [`PIECE_CAP`] bytes with the bytes hashed since its previous call (never after the last
    /// piece); it may stop the read. Opens the file read-only and writes nothing.
    ///
    /// # Errors
    /// [`Error::InvalidName`](crate::Error::InvalidName); [`Error::Io`](crate::Error::Io) with
    /// [`Op::Open`](crate::Op::Open), [`Op::Stat`](crate::Op::Stat), [`Op::Read`](crate::Op::Read)
    /// or [`Op::Map`](crate::Op::Map); [`Error::SizeMismatch`](crate::Error::SizeMismatch) if the
    /// file shrinks while it is read; whatever `between` returns.
    pub fn checksum_file(&self, name: &str, between: Between<'_>) -> Result<(Digest, u64)> {
        let fd = self.open_read(name)?;
        let len = self.file_len(fd.as_fd(), name)?;
        let path = self.path_of(name);
        let source = Source {
            fd: fd.as_fd(),
            path: &path,
            offset: 0,
            len,
        };
        let mut hasher = Hasher::new();
        let mut unreported = 0;
        sequential::read_sequential(self.fs(), source, CacheUse::LeaveAsFound, &mut |bytes| {
            if unreported >= to_u64(PIECE_CAP) {
                between(unreported)?;
                unreported = 0;
            }
            hasher.update(bytes);
            unreported += to_u64(bytes.len());
            Ok(())
        })?;
        Ok((hasher.digest(), len))
    }
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::fs;

    use super::*;
    use crate::checksum::digest_of;
    use crate::dir::open_temp_dir;
    use crate::error::Error;

    #[test]
    fn checksum_of_a_file_of_several_pieces_is_the_digest_of_its_bytes_reported_every_64_mib() {
        let (tmp, dir) = open_temp_dir();
        let data: Vec<u8> = (0..2 * PIECE_CAP + 12_345).map(|index| (index % 253) as u8).collect();
        fs::write(tmp.path().join("k.npy"), &data).unwrap();
        let mut moved = Vec::new();

        let (digest, len) = dir
            .checksum_file("k.npy", &mut |bytes| {
                moved.push(bytes);
                Ok(())
            })
            .unwrap();

        assert_eq!(digest, digest_of(&data));
        assert_eq!(len, to_u64(data.len()));
        assert_eq!(moved, [to_u64(PIECE_CAP), to_u64(PIECE_CAP)]);
    }

    #[test]
    fn checksum_of_an_empty_file_is_the_digest_of_nothing() {
        let (tmp, dir) = open_temp_dir();
        fs::write(tmp.path().join("k.npy"), b"").unwrap();

        let (digest, len) = dir.checksum_file("k.npy", &mut |_| Ok(())).unwrap();

        assert_eq!(digest, digest_of(b""));
        assert_eq!(len, 0);
    }

    #[test]
    fn a_stopping_callback_stops_the_read_with_its_error() {
        let (tmp, dir) = open_temp_dir();
        fs::write(tmp.path().join("k.npy"), vec![1u8; 2 * PIECE_CAP]).unwrap();

        let err = dir
            .checksum_file("k.npy", &mut |_| Err(Error::Interrupted))
            .unwrap_err();

        assert!(matches!(err, Error::Interrupted), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_open_error_naming_it() {
        let (_tmp, dir) = open_temp_dir();

        let err = dir.checksum_file("gone.npy", &mut |_| Ok(())).unwrap_err();

        assert!(
            matches!(
                err,
                Error::Io {
                    op: crate::Op::Open,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.raw_os_error(), Some(rustix::io::Errno::NOENT.raw_os_error()));
    }
}
