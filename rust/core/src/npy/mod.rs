//! `.npy` files: the header codec ([`header`]), the Python-literal parser it reads the header
//! dict with ([`literal`]), and reading the header of a file in a [`CacheDir`].

pub mod header;
pub mod literal;

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

pub use header::{
    HeaderError, MAX_HEADER_LEN, NPY_ARRAY_ALIGN, NPY_DATA_ALIGN, NPY_MAGIC, NpyHeader, Preamble, decode_header,
    encode_header, parse_preamble,
};

use crate::checked::{to_u64, to_usize};
use crate::copy::read_exact_at;
use crate::dir::CacheDir;
use crate::error::{Error, Op, Result};
use crate::mapping::{Mapping, MappingMode};

impl CacheDir {
    /// Reads and decodes the `.npy` header of `name` (usually one 4 KiB pread).
    ///
    /// # Errors
    /// [`Error::InvalidName`]; [`Error::Io`] with [`Op::Open`], [`Op::Stat`] or [`Op::Read`];
    /// [`Error::InvalidHeader`] for a malformed header or one longer than the file.
    ///
    /// [`Op::Open`]: crate::Op::Open
    /// [`Op::Stat`]: crate::Op::Stat
    /// [`Op::Read`]: crate::Op::Read
    pub fn read_header(&self, name: &str) -> Result<NpyHeader> {
        self.read_npy(name, None).map(|(header, _)| header)
    }

    /// Reads the `.npy` header of `name` and, with `map`, maps its payload in that mode, through
    /// one open: the window runs from the header's data offset to the end of the file. O(1) for
    /// the payload: nothing of it is read.
    ///
    /// # Errors
    /// As [`CacheDir::read_header`] and [`Mapping::from_fd`].
    pub fn read_npy(&self, name: &str, map: Option<MappingMode>) -> Result<(NpyHeader, Option<Mapping>)> {
        let fd = self.open_read(name)?;
        // One fstat serves the header check and the mapping: a reload of many small keys pays
        // per system call, and an artefact is never truncated in place (replacement is by rename).
        let path = self.path_of(name);
        let file = self
            .fs()
            .fstat(fd.as_fd())
            .map_err(|err| Error::io(Op::Stat, &path, err))?;
        let header = self.header_within(fd.as_fd(), &path, file.len)?;
        let mapping = match map {
            Some(mode) => Some(Mapping::from_stat(
                self.fs(),
                fd.as_fd(),
                &path,
                &file,
                mode,
                header.data_offset,
                None,
            )?),
            None => None,
        };
        Ok((header, mapping))
    }

    /// Reads and decodes the `.npy` header of the open file `fd` at `path`, `file_len` bytes long.
    ///
    /// # Errors
    /// As [`CacheDir::read_header`], except for the open and the stat.
    pub(crate) fn header_within(&self, fd: BorrowedFd<'_>, path: &Path, file_len: u64) -> Result<NpyHeader> {
        let invalid = |reason: HeaderError| Error::InvalidHeader {
            path: path.to_path_buf(),
            reason,
        };
        let first = to_usize(file_len.min(NPY_DATA_ALIGN))?;
        let mut bytes = vec![0u8; first];
        read_exact_at(self.fs(), fd, path, &mut bytes, 0)?;
        let preamble = parse_preamble(&bytes).map_err(invalid)?;
        let end = preamble.data_offset_within(file_len).map_err(invalid)?;
        if end > to_u64(bytes.len()) {
            let already = bytes.len();
            bytes.resize(to_usize(end)?, 0);
            let rest = bytes.get_mut(already..).unwrap_or_default();
            read_exact_at(self.fs(), fd, path, rest, to_u64(already))?;
        }
        decode_header(&bytes, file_len).map_err(invalid)
    }
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn cache_with(name: &str, content: &[u8]) -> (tempfile::TempDir, CacheDir) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(name), content).unwrap();
        let dir = CacheDir::open(tmp.path(), false).unwrap();
        (tmp, dir)
    }

    #[test]
    fn read_header_reads_past_the_first_page_for_a_long_header() {
        let fields: Vec<String> = (0..300).map(|index| format!("('f{index}', '<f8')")).collect();
        let descr = format!("[{}]", fields.join(", "));
        let mut file = encode_header(&descr, false, &[2], 2 * 300 * 8).unwrap();
        assert!(to_u64(file.len()) > NPY_DATA_ALIGN);
        let data_offset = to_u64(file.len());
        file.resize(file.len() + 4800, 0);
        let (_tmp, dir) = cache_with("k.npy", &file);

        let header = dir.read_header("k.npy").unwrap();

        assert_eq!(header.descr, descr);
        assert_eq!(header.data_offset, data_offset);
        assert_eq!(header.file_len, to_u64(file.len()));
    }

    #[test]
    fn read_header_of_a_file_shorter_than_a_page() {
        let file = encode_header("'<u1'", false, &[0], 0).unwrap();
        let (_tmp, dir) = cache_with("k.npy", &file);

        let header = dir.read_header("k.npy").unwrap();

        assert_eq!((header.data_offset, header.file_len), (128, 128));
        assert_eq!(header.shape, [0]);
    }

    #[test]
    fn read_header_refuses_empty_and_truncated_files_as_invalid_headers() {
        let full = encode_header("'<f8'", false, &[2], 16).unwrap();
        let cases: [(&[u8], &str); 3] = [
            (b"", "magic"),
            (b"\x93NUMPY\x01", "magic"),
            (&full[..100], "file holds 100"),
        ];
        for (content, reason) in cases {
            let (_tmp, dir) = cache_with("k.npy", content);

            let err = dir.read_header("k.npy").unwrap_err();

            match err {
                Error::InvalidHeader { path, reason: got } => {
                    assert_eq!(path, dir.path_of("k.npy"));
                    assert!(got.to_string().contains(reason), "{got}");
                }
                other => panic!("expected InvalidHeader, got {other:?}"),
            }
        }
    }
}
