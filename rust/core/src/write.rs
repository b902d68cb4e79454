//! Replacing one file of a [`CacheDir`] atomically: a payload streamed into a reserved temp
//! (from a contiguous buffer, gathered from a strided array, or copied from another file),
//! then committed and mapped `r+`.
//!
//! [`PayloadWriter`] is the one writer of a known number of payload bytes into a temp; a store
//! commit uses it too, with the payload after the `.npy` header.

use std::os::fd::AsFd;

use crate::atomic::PendingFile;
use crate::checked::{add, to_u64};
use crate::copy::{self, Between, ChunkBudget, RangeEnd};
use crate::dir::CacheDir;
use crate::error::{Error, Result};
use crate::gather::{GatherCursor, StridedBytes};
use crate::mapping::{Mapping, MappingMode};
use crate::names::validate_name;

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

/// Writes exactly `expected` payload bytes into a [`PendingFile`], starting at `base`.
#[derive(Debug)]
pub struct PayloadWriter {
    file: PendingFile,
    base: u64,
    expected: u64,
    written: u64,
    budget: ChunkBudget,
}

impl PayloadWriter {
    /// A writer of `expected` payload bytes at `base` in `file`, moving at most `budget`
    /// bytes per step.
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

    /// Appends a contiguous `block` to the payload, in pieces of the budget.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`] if the payload would exceed the expected size; as
    /// [`copy::write_chunked`] otherwise.
    pub fn write_block(&mut self, block: &[u8], between: Between<'_>) -> Result<()> {
        let len = to_u64(block.len());
        let at = self.next_offset(len)?;
        self.file.write_at(block, at, self.budget, between)?;
        self.written += len;
        Ok(())
    }

    /// Appends the C-order bytes of a strided `source`, gathered into one reusable bounce
    /// buffer of [`ChunkBudget::bounce_len`] bytes and written from it piece by piece.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`] if the payload would exceed the expected size; as
    /// [`copy::write_all_at`], or whatever `between` returns.
    pub fn write_gathered(&mut self, source: &StridedBytes<'_>, between: Between<'_>) -> Result<()> {
        let len = source.byte_len();
        let mut at = self.next_offset(len)?;
        let mut bounce = vec![0u8; self.budget.bounce_len(len)];
        let mut cursor = GatherCursor::default();
        let mut first = true;
        loop {
            let filled = source.gather(&mut cursor, &mut bounce);
            if filled == 0 {
                break;
            }
            copy::between_chunks(&mut first, between)?;
            let piece = bounce.get(..filled).unwrap_or_default();
            copy::write_all_at(self.file.dir().fs(), self.file.fd(), &self.file.temp_path(), piece, at)?;
            at = add(at, to_u64(filled))?;
            self.written += to_u64(filled);
        }
        Ok(())
    }

    /// Fills the rest of the payload from `src_name` (in the same directory) at `src_offset`.
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
        copy::copy_between(dir.fs(), from, to, remaining, self.budget, between)?;
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
    pub fn begin_write(&self, name: &str, nbytes: u64, budget: ChunkBudget) -> Result<PayloadWriter> {
        let file = PendingFile::create(self, name)?;
        file.reserve(nbytes)?;
        Ok(PayloadWriter::new(file, 0, nbytes, budget))
    }

    /// Commits a finished [`PayloadWriter`] and maps the new file `r+`.
    ///
    /// # Errors
    /// As [`PayloadWriter::finish`], [`PendingFile::commit`] and [`Mapping::from_fd`].
    pub fn finish_write(&self, writer: PayloadWriter, durable: bool) -> Result<Mapping> {
        let len = writer.expected;
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
    /// pieces of `budget`.
    ///
    /// # Errors
    /// As [`CacheDir::begin_write`], [`PayloadWriter::copy_from`] and [`CacheDir::finish_write`].
    /// On any error the temp is removed and `dst` is unchanged, unless the rename happened
    /// (a failing directory fsync or mapping leaves the new content in place).
    pub fn replace_with_range(
        &self,
        src: FileRange<'_>,
        dst: &str,
        durable: bool,
        budget: ChunkBudget,
        between: Between<'_>,
    ) -> Result<Mapping> {
        validate_name(src.name)?;
        let mut writer = self.begin_write(dst, src.len, budget)?;
        writer.copy_from(src.name, src.offset, between)?;
        self.finish_write(writer, durable)
    }
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::fs;

    use super::*;

    fn real_dir() -> (tempfile::TempDir, CacheDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CacheDir::open(tmp.path(), false).unwrap();
        (tmp, dir)
    }

    fn no_pause() -> impl FnMut() -> Result<()> {
        || Ok(())
    }

    #[test]
    fn payload_writer_refuses_more_than_the_expected_payload() {
        let (tmp, dir) = real_dir();
        let mut writer = dir.begin_write("k.dat", 4, ChunkBudget::new(16)).unwrap();
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

    #[test]
    fn payload_writer_refuses_to_finish_short() {
        let (tmp, dir) = real_dir();
        let mut writer = dir.begin_write("k.dat", 4, ChunkBudget::new(16)).unwrap();
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
}
