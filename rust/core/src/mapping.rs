//! Memory mappings of artefact files, exposed as a raw window `[offset, offset + len)`.
//!
//! The file is mapped from offset 0, so the window need not be page-aligned. Its length is
//! checked against `fstat` first: a short file is an error, never a SIGBUS on first touch. A
//! zero-length window is an empty buffer and calls no `mmap`. The mapped bytes are only ever
//! handed out as a raw pointer: Python threads may write them at any time, so no `&[u8]` or
//! `&mut [u8]` is ever formed over them here.
#![allow(unsafe_code)]

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use memmap2::{Mmap, MmapMut, MmapOptions};
use rustix::fs::OFlags;

use crate::dir::{CacheDir, validate_name};
use crate::error::{Error, Op, Result, add, to_usize};
use crate::fs::Fs;

/// How a file is mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingMode {
    /// `r`: shared, read-only.
    ReadOnly,
    /// `r+`: shared, writable; writes reach the file, [`Mapping::flush`] makes them durable.
    ReadWrite,
    /// `c`: private copy-on-write; writes never reach the file.
    CopyOnWrite,
}

impl MappingMode {
    /// The `NumPy` mode string.
    pub const fn as_str(self) -> &'static str {
        match self {
            MappingMode::ReadOnly => "r",
            MappingMode::ReadWrite => "r+",
            MappingMode::CopyOnWrite => "c",
        }
    }

    /// Parses a `NumPy` mode string (`r`, `r+`, `c`).
    pub fn parse(mode: &str) -> Option<Self> {
        match mode {
            "r" => Some(MappingMode::ReadOnly),
            "r+" => Some(MappingMode::ReadWrite),
            "c" => Some(MappingMode::CopyOnWrite),
            _ => None,
        }
    }

    /// Whether the exported buffer is read-only.
    pub const fn is_readonly(self) -> bool {
        matches!(self, MappingMode::ReadOnly)
    }
}

enum Map {
    Empty,
    Shared(Mmap),
    Writable(MmapMut),
}

/// A mapped window of one file. Unmapped on drop.
pub struct Mapping {
    map: Map,
    ptr: NonNull<u8>,
    offset: u64,
    len: usize,
    mode: MappingMode,
    path: PathBuf,
}

// SAFETY: `Mapping` owns its memmap2 map (itself Send + Sync) and a pointer into it that is
// never dereferenced by this crate; the memory stays valid until drop, whichever thread
// drops it. Concurrent access to the mapped bytes is the exporter's (Python's) business, and
// no Rust reference to them ever exists.
unsafe impl Send for Mapping {}
// SAFETY: as above; every method takes `&self` and only reads immutable fields or calls
// msync, which the kernel serialises.
unsafe impl Sync for Mapping {}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("path", &self.path)
            .field("mode", &self.mode)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Mapping {
    /// Opens `name` in `dir` and maps the window `[offset, offset + len)` (`len = None`: to the
    /// end of the file). O(1): open, fstat, mmap, close; reads no data. `r` and `c` open the
    /// file read-only; `r+` opens it read-write and refuses to follow a symlink.
    ///
    /// # Errors
    /// [`Error::InvalidName`]; [`Error::Io`] with [`Op::Open`], [`Op::Stat`] or [`Op::Map`];
    /// [`Error::SizeMismatch`] when the file is shorter than the window.
    pub fn open(dir: &CacheDir, name: &str, mode: MappingMode, offset: u64, len: Option<u64>) -> Result<Self> {
        validate_name(name)?;
        let flags = match mode {
            MappingMode::ReadWrite => OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            MappingMode::ReadOnly | MappingMode::CopyOnWrite => OFlags::RDONLY | OFlags::CLOEXEC,
        };
        let path = dir.path_of(name);
        let fd: OwnedFd = dir
            .fs()
            .open(dir.fd(), name, flags, 0)
            .map_err(|err| Error::io(Op::Open, &path, err))?;
        Self::from_fd(dir.fs(), fd.as_fd(), &path, mode, offset, len)
    }

    /// Maps the window of an already open file (opened readable, and writable for `r+`).
    ///
    /// # Errors
    /// As [`Mapping::open`].
    pub fn from_fd(
        fs: &dyn Fs,
        fd: BorrowedFd<'_>,
        path: &Path,
        mode: MappingMode,
        offset: u64,
        len: Option<u64>,
    ) -> Result<Self> {
        let file_len = fs.fstat(fd).map_err(|err| Error::io(Op::Stat, path, err))?.len;
        let len = match len {
            Some(len) => len,
            None => file_len.checked_sub(offset).ok_or_else(|| Error::SizeMismatch {
                path: path.into(),
                expected: offset,
                actual: file_len,
            })?,
        };
        let end = add(offset, len)?;
        if file_len < end {
            return Err(Error::SizeMismatch {
                path: path.into(),
                expected: end,
                actual: file_len,
            });
        }
        let window_len = to_usize(len)?;
        let window_start = to_usize(offset)?;
        if window_len == 0 {
            return Ok(Self {
                map: Map::Empty,
                ptr: NonNull::dangling(),
                offset,
                len: 0,
                mode,
                path: path.into(),
            });
        }
        fs.map_gate(path).map_err(|err| Error::io(Op::Map, path, err))?;
        let map_len = to_usize(end)?;
        let options = {
            let mut options = MmapOptions::new();
            options.len(map_len);
            options
        };
        let mut map = match mode {
            // SAFETY: memmap2 requires that the file is not truncated while mapped. We never
            // truncate an artefact (replacement is by rename), its length was checked against
            // offset + len above, and truncation by another process is outside the contract.
            MappingMode::ReadOnly => unsafe { options.map(fd.as_raw_fd()) }.map(Map::Shared),
            // SAFETY: as above; the fd is open read-write for `r+`.
            MappingMode::ReadWrite => unsafe { options.map_mut(fd.as_raw_fd()) }.map(Map::Writable),
            // SAFETY: as above; a private mapping never writes back to the file.
            MappingMode::CopyOnWrite => unsafe { options.map_copy(fd.as_raw_fd()) }.map(Map::Writable),
        }
        .map_err(|err| Error::io(Op::Map, path, err))?;
        let base = match &mut map {
            Map::Shared(map) => map.as_ptr().cast_mut(),
            Map::Writable(map) => map.as_mut_ptr(),
            Map::Empty => NonNull::<u8>::dangling().as_ptr(),
        };
        // SAFETY: `window_start < map_len` (the window is non-empty and ends at `map_len`), so
        // the offset pointer stays inside the mapping.
        let start = unsafe { base.add(window_start) };
        let ptr = NonNull::new(start).ok_or_else(|| Error::io(Op::Map, path, std::io::Error::other("null mapping")))?;
        Ok(Self {
            map,
            ptr,
            offset,
            len: window_len,
            mode,
            path: path.into(),
        })
    }

    /// Start of the window. Valid for [`Mapping::len`] bytes while `self` lives; writable
    /// unless the mode is `r`. Never null (dangling for an empty window).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length of the window in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of the window in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The mapping mode.
    pub fn mode(&self) -> MappingMode {
        self.mode
    }

    /// The mapped file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `msync(MS_SYNC)` of the window for `r+`; a no-op for `r`, `c` and empty windows.
    ///
    /// # Errors
    /// [`Error::Io`] with [`Op::Map`].
    pub fn flush(&self) -> Result<()> {
        match (&self.map, self.mode) {
            (Map::Writable(map), MappingMode::ReadWrite) => {
                let start = to_usize(self.offset)?;
                map.flush_range(start, self.len)
                    .map_err(|err| Error::io(Op::Map, &self.path, err))
            }
            _ => Ok(()),
        }
    }
}
