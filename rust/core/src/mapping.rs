//! Memory mappings of artefact files, exposed as a raw window `[offset, offset + len)`.
//!
//! The file is mapped from offset 0, so the window need not be page-aligned. Its length is
//! checked against `fstat` first: a short file is an error, never a SIGBUS on first touch. A
//! zero-length window is an empty buffer and calls no `mmap`. The mapped bytes are only ever
//! handed out as a raw pointer: Python threads may write them at any time, so no `&[u8]` or
//! `&mut [u8]` is ever formed over them here.
#![allow(unsafe_code)]

use std::fmt;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use memmap2::{Mmap, MmapMut, MmapOptions};
use rustix::fs::OFlags;

use crate::checked::{add, to_u64, to_usize};
use crate::dir::CacheDir;
use crate::error::{Error, Op, Result};
use crate::fs::{FileStat, Fs};
use crate::names::validate_name;

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
    identity: (u64, u64),
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
        let file = fs.fstat(fd).map_err(|err| Error::io(Op::Stat, path, err))?;
        Self::from_stat(fs, fd, path, &file, mode, offset, len)
    }

    /// Maps the window of an already open file whose `fstat` the caller just made (`file`).
    ///
    /// # Errors
    /// As [`Mapping::open`], except for the stat.
    pub fn from_stat(
        fs: &dyn Fs,
        fd: BorrowedFd<'_>,
        path: &Path,
        file: &FileStat,
        mode: MappingMode,
        offset: u64,
        len: Option<u64>,
    ) -> Result<Self> {
        let (file_len, identity) = (file.len, file.identity);
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
                identity,
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
            identity,
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

    /// Which file is mapped (device and inode numbers): the file the path named when it was mapped.
    pub fn identity(&self) -> (u64, u64) {
        self.identity
    }

    /// Whether some page of a copy-on-write window holds a private copy, i.e. was written, so
    /// the window's bytes may differ from the file's. `false` for `r` and `r+` windows (their
    /// pages are the file's) and empty ones.
    ///
    /// Reads `/proc/self/pagemap` for the window's pages: a written page of a private mapping
    /// is anonymous (present without the file-page bit) or swapped out; an untouched or only read
    /// page is absent or a page of the file. O(pages) with no data read; stops at the first
    /// written page. `true` whenever that cannot be told (no `/proc`, an unreadable entry).
    pub fn has_private_pages(&self) -> bool {
        if self.mode != MappingMode::CopyOnWrite || self.len == 0 {
            return false;
        }
        let mut found = false;
        let scanned = scan_private_pages(self.ptr.as_ptr().addr(), self.len, |_| {
            found = true;
            false
        });
        found || scanned.is_err()
    }

    /// The byte ranges of the window that may differ from the file: the written pages of a
    /// copy-on-write window (as [`Mapping::has_private_pages`] finds them), clipped to the window,
    /// in order and merged; empty for `r` and `r+`. `None` when the page map cannot be read
    /// (then all of it may differ).
    pub fn private_ranges(&self) -> Option<Vec<Range<usize>>> {
        if self.mode != MappingMode::CopyOnWrite || self.len == 0 {
            return Some(Vec::new());
        }
        let start = self.ptr.as_ptr().addr();
        let page = rustix::param::page_size();
        let first_page = start / page * page;
        let mut ranges: Vec<Range<usize>> = Vec::new();
        scan_private_pages(start, self.len, |index| {
            let from = (first_page + index * page).max(start) - start;
            let to = (first_page + (index + 1) * page - start).min(self.len);
            match ranges.last_mut() {
                Some(last) if last.end == from => last.end = to,
                _ => ranges.push(from..to),
            }
            true
        })
        .ok()?;
        Some(ranges)
    }

    /// The window's bytes in `range`, to write them out.
    ///
    /// Python threads may write the mapped memory at any time, so the bytes can change while the
    /// slice is read: a concurrent write may be torn in what is written out, the contract
    /// `ndarray.tofile` has and that the binding's buffer intake shares.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`] when `range` reaches past the window.
    pub fn window_bytes(&self, range: Range<usize>) -> Result<&[u8]> {
        if range.start > range.end || range.end > self.len {
            return Err(Error::SizeMismatch {
                path: self.path.clone(),
                expected: to_u64(range.end),
                actual: to_u64(self.len),
            });
        }
        if range.is_empty() {
            return Ok(&[]);
        }
        // SAFETY: `range` lies inside the window (checked above), which is mapped and readable
        // for `len` bytes while `self` lives; the slice borrows `self`, so it cannot outlive the
        // mapping. Other threads may write these bytes meanwhile (see above); we only read them.
        Ok(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(range.start), range.len()) })
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

/// Page-map entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PAGEMAP_PRESENT: u64 = 1 << 63;
const PAGEMAP_SWAPPED: u64 = 1 << 62;
const PAGEMAP_FILE_OR_SHARED: u64 = 1 << 61;
/// How many page-map entries one read takes.
const PAGEMAP_BATCH: usize = 4096;

/// Calls `found` with the index (from the first page) of each private page (anonymous or
/// swapped) of `[start, start + len)` of this process, in order, until it returns `false`.
///
/// # Errors
/// Whatever opening or reading `/proc/self/pagemap` fails with.
fn scan_private_pages(start: usize, len: usize, mut found: impl FnMut(usize) -> bool) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;

    let page = rustix::param::page_size();
    let first = start / page;
    let last = (start + (len - 1)) / page;
    let pagemap = std::fs::File::open("/proc/self/pagemap")?;
    let mut entries = vec![0u8; PAGEMAP_BATCH * 8];
    let mut next = first;
    while next <= last {
        let count = (last - next + 1).min(PAGEMAP_BATCH);
        let buffer = entries.get_mut(..count * 8).unwrap_or_default();
        pagemap.read_exact_at(buffer, (next as u64) * 8)?;
        for (offset, raw) in buffer.chunks_exact(8).enumerate() {
            let mut word = [0u8; 8];
            word.copy_from_slice(raw);
            let entry = u64::from_ne_bytes(word);
            let anonymous = entry & PAGEMAP_PRESENT != 0 && entry & PAGEMAP_FILE_OR_SHARED == 0;
            if (anonymous || entry & PAGEMAP_SWAPPED != 0) && !found(next - first + offset) {
                return Ok(());
            }
        }
        next += count;
    }
    Ok(())
}

/// A read-only view of `[offset, offset + len)` of an open file, for reading it once; unmapped on
/// drop.
pub(crate) struct ReadWindow {
    map: Option<Mmap>,
    skip: usize,
}

impl ReadWindow {
    /// Maps the range (`offset` need not be page-aligned: the mapping starts at the page holding
    /// it). The caller has checked that the file holds the range.
    ///
    /// # Errors
    /// [`Error::Io`] with [`Op::Map`].
    pub(crate) fn map(fs: &dyn Fs, fd: BorrowedFd<'_>, path: &Path, offset: u64, len: u64) -> Result<Self> {
        let page = to_u64(rustix::param::page_size());
        let start = offset - offset % page;
        let skip = to_usize(offset - start)?;
        if len == 0 {
            return Ok(Self { map: None, skip });
        }
        let map_len = to_usize(len)?.checked_add(skip).ok_or(Error::SizeOverflow)?;
        fs.map_gate(path).map_err(|err| Error::io(Op::Map, path, err))?;
        // SAFETY: memmap2 requires that the file is not truncated while mapped. Artefacts are never
        // truncated (replacement is by rename), the caller checked the length against the range,
        // and truncation by another process is outside the contract. The bytes are only read; they
        // may change under us only as writes by other mappings of the file do, which the reader
        // (a checksum) then simply sees.
        let map = unsafe { MmapOptions::new().offset(start).len(map_len).map(fd.as_raw_fd()) }
            .map_err(|err| Error::io(Op::Map, path, err))?;
        Ok(Self { map: Some(map), skip })
    }

    /// The bytes of the range.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.map
            .as_ref()
            .and_then(|map| map.get(self.skip..))
            .unwrap_or_default()
    }
}

/// `struct cachestat_range` of `linux/mman.h`.
#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

/// `struct cachestat` of `linux/mman.h` (the kernel's field names).
#[repr(C)]
#[derive(Default)]
#[allow(clippy::struct_field_names)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// `cachestat(2)` (Linux 6.5), the same number on every architecture.
const SYS_CACHESTAT: libc::c_long = 451;

/// How many pages of `[offset, offset + len)` of an open file are in the page cache, counted by
/// `cachestat` (one call, per cached folio rather than per page), or `None` where the kernel lacks
/// it. Reads nothing of the file.
pub(crate) fn cached_page_count(fd: BorrowedFd<'_>, offset: u64, len: u64) -> Option<u64> {
    let range = CachestatRange { off: offset, len };
    let mut stat = Cachestat::default();
    // SAFETY: cachestat reads the range struct and writes the stat struct, both live `#[repr(C)]`
    // values laid out as `linux/mman.h` declares them; the descriptor is borrowed for the call and
    // the flags must be 0.
    let status = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd.as_raw_fd(),
            &raw const range,
            &raw mut stat,
            0 as libc::c_uint,
        )
    };
    (status == 0).then_some(stat.nr_cache)
}

/// Which pages of `[offset, offset + len)` of an open file are in the page cache, one `bool` per
/// page (`mincore` on a read-only mapping of the range that is never touched, so asking changes
/// nothing). `offset` must be page-aligned. The kernel reveals residency only for files the caller
/// owns or may write; for others every page counts as cached.
///
/// # Errors
/// [`Error::Io`] with [`Op::Map`]. An empty range is an empty vector and maps nothing.
pub(crate) fn cached_pages(fs: &dyn Fs, fd: BorrowedFd<'_>, path: &Path, offset: u64, len: u64) -> Result<Vec<bool>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let map_len = to_usize(len)?;
    fs.map_gate(path).map_err(|err| Error::io(Op::Map, path, err))?;
    // SAFETY: memmap2 requires that the file is not truncated while mapped; this mapping is never
    // read (only mincore looks at it, which reports residency and faults nothing in) and lives for
    // this call only, so truncation meanwhile cannot fault us.
    let map = unsafe { MmapOptions::new().offset(offset).len(map_len).map(fd.as_raw_fd()) }
        .map_err(|err| Error::io(Op::Map, path, err))?;
    let page = rustix::param::page_size();
    let mut vector = vec![0u8; map_len.div_ceil(page)];
    // SAFETY: `map` is a live mapping of `map_len` bytes starting at a page boundary (mmap returns
    // page-aligned addresses), and `vector` holds one byte per page of it, as mincore requires.
    // mincore only writes `vector`.
    let status = unsafe { libc::mincore(map.as_ptr().cast_mut().cast(), map_len, vector.as_mut_ptr()) };
    if status != 0 {
        return Err(Error::io(Op::Map, path, std::io::Error::last_os_error()));
    }
    Ok(vector.into_iter().map(|flags| flags & 1 == 1).collect())
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::fs;
    use std::sync::Arc;

    use std::os::fd::AsFd;

    use rustix::io::Errno;

    use super::*;
    use crate::fs::{FaultyFs, RealFs, RecordingFs};

    const PAGE: usize = 4096;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|index| (index % 251) as u8).collect()
    }

    fn cache_with(content: &[u8], fs: Arc<dyn Fs>) -> (tempfile::TempDir, CacheDir) {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("k.dat"), content).unwrap();
        let dir = CacheDir::open_with(tmp.path(), false, fs).unwrap();
        (tmp, dir)
    }

    fn window(mapping: &Mapping) -> Vec<u8> {
        let mut out = vec![0u8; mapping.len()];
        // SAFETY: the window is valid for `len` bytes while `mapping` lives, nothing else
        // writes it during the test, and `out` is a separate allocation of that length.
        unsafe { std::ptr::copy_nonoverlapping(mapping.as_ptr(), out.as_mut_ptr(), mapping.len()) };
        out
    }

    fn map_calls(recording: &RecordingFs) -> usize {
        recording.calls().iter().filter(|call| call.op == Op::Map).count()
    }

    #[test]
    fn mode_strings_round_trip_and_unknown_ones_are_refused() {
        for mode in [MappingMode::ReadOnly, MappingMode::ReadWrite, MappingMode::CopyOnWrite] {
            assert_eq!(MappingMode::parse(mode.as_str()), Some(mode));
        }
        for text in ["", "w", "w+", "R", "r+ ", "readonly", "c+"] {
            assert_eq!(MappingMode::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn only_r_exports_a_readonly_buffer() {
        assert!(MappingMode::ReadOnly.is_readonly());
        assert!(!MappingMode::ReadWrite.is_readonly());
        assert!(!MappingMode::CopyOnWrite.is_readonly());
    }

    #[test]
    fn zero_length_window_calls_no_mmap() {
        let recording = Arc::new(RecordingFs::new());
        let (_tmp, dir) = cache_with(&pattern(100), recording.clone());
        recording.clear();

        for mode in [MappingMode::ReadOnly, MappingMode::ReadWrite, MappingMode::CopyOnWrite] {
            let mapping = Mapping::open(&dir, "k.dat", mode, 37, Some(0)).unwrap();
            assert!(mapping.is_empty());
            assert_eq!(mapping.offset(), 37);
            assert!(!mapping.as_ptr().is_null());
            mapping.flush().unwrap();
        }
        let at_end = Mapping::open(&dir, "k.dat", MappingMode::ReadOnly, 100, None).unwrap();
        assert!(at_end.is_empty());

        assert_eq!(map_calls(&recording), 0);
    }

    #[test]
    fn non_empty_window_passes_the_map_gate_once() {
        let recording = Arc::new(RecordingFs::new());
        let (_tmp, dir) = cache_with(&pattern(100), recording.clone());
        recording.clear();

        let mapping = Mapping::open(&dir, "k.dat", MappingMode::ReadOnly, 0, Some(1)).unwrap();

        assert_eq!(mapping.len(), 1);
        assert_eq!(map_calls(&recording), 1);
    }

    #[test]
    fn unaligned_window_crossing_a_page_boundary_sees_exactly_its_bytes() {
        let content = pattern(3 * PAGE);
        let (_tmp, dir) = cache_with(&content, Arc::new(RealFs));

        for (offset, len) in [(PAGE - 6, 12), (PAGE + 1, PAGE), (1, 3 * PAGE - 1), (3 * PAGE - 1, 1)] {
            let mapping =
                Mapping::open(&dir, "k.dat", MappingMode::ReadOnly, to_u64(offset), Some(to_u64(len))).unwrap();

            assert_eq!(mapping.offset(), to_u64(offset));
            assert_eq!(window(&mapping), content[offset..offset + len], "{offset}+{len}");
        }
    }

    #[test]
    fn flushing_an_unaligned_read_write_window_persists_only_its_bytes() {
        let content = pattern(3 * PAGE);
        let (tmp, dir) = cache_with(&content, Arc::new(RealFs));
        let (offset, len) = (PAGE + 1, 10);
        let mapping = Mapping::open(&dir, "k.dat", MappingMode::ReadWrite, to_u64(offset), Some(to_u64(len))).unwrap();

        // SAFETY: the window is writable (`r+`) and valid for `len` bytes while `mapping` lives;
        // nothing else touches it during the test.
        unsafe { std::ptr::write_bytes(mapping.as_ptr(), 0xEE, len) };
        mapping.flush().unwrap();

        let mut expected = content;
        expected[offset..offset + len].fill(0xEE);
        assert_eq!(fs::read(tmp.path().join("k.dat")).unwrap(), expected);
    }

    #[test]
    fn window_end_past_u64_is_a_size_overflow() {
        let (_tmp, dir) = cache_with(&pattern(10), Arc::new(RealFs));

        for (offset, len) in [(u64::MAX, 1), (1, u64::MAX)] {
            let err = Mapping::open(&dir, "k.dat", MappingMode::ReadOnly, offset, Some(len)).unwrap_err();
            assert!(matches!(err, Error::SizeOverflow), "{offset}+{len}: {err}");
        }
    }

    #[test]
    fn window_one_byte_past_the_end_is_refused_with_both_sizes() {
        let (_tmp, dir) = cache_with(&pattern(10), Arc::new(RealFs));

        let err = Mapping::open(&dir, "k.dat", MappingMode::ReadOnly, 4, Some(7)).unwrap_err();

        match err {
            Error::SizeMismatch { path, expected, actual } => {
                assert_eq!(path, dir.path_of("k.dat"));
                assert_eq!((expected, actual), (11, 10));
            }
            other => panic!("expected SizeMismatch, got {other:?}"),
        }
    }

    #[test]
    fn refused_map_gate_surfaces_as_a_map_error_with_the_path() {
        let faulty = Arc::new(FaultyFs::new(Op::Map, 1, Errno::NOMEM.raw_os_error()));
        let (_tmp, dir) = cache_with(&pattern(10), faulty);

        let err = Mapping::open(&dir, "k.dat", MappingMode::ReadOnly, 0, None).unwrap_err();

        match err {
            Error::Io { op, path, source } => {
                assert_eq!(op, Op::Map);
                assert_eq!(path, dir.path_of("k.dat"));
                assert_eq!(source.raw_os_error(), Some(Errno::NOMEM.raw_os_error()));
            }
            other => panic!("expected Error::Io, got {other:?}"),
        }
    }

    #[test]
    fn failed_fstat_surfaces_as_a_stat_error() {
        let faulty = Arc::new(FaultyFs::new(Op::Stat, 1, Errno::IO.raw_os_error()));
        let (_tmp, dir) = cache_with(&pattern(10), faulty);

        let err = Mapping::open(&dir, "k.dat", MappingMode::ReadOnly, 0, None).unwrap_err();

        assert!(matches!(err, Error::Io { op: Op::Stat, .. }), "{err}");
        assert_eq!(err.raw_os_error(), Some(Errno::IO.raw_os_error()));
    }

    fn write_byte(mapping: &Mapping, at: usize) {
        assert!(at < mapping.len());
        // SAFETY: the window is writable (`c` or `r+`) and valid for `len` bytes while `mapping`
        // lives, `at` is inside it, and nothing else touches it during the test.
        unsafe { mapping.as_ptr().add(at).write_volatile(0xEE) };
    }

    #[test]
    fn a_copy_on_write_window_read_but_never_written_has_no_private_pages() {
        let content = pattern(64 * PAGE);
        let (_tmp, dir) = cache_with(&content, Arc::new(RealFs));
        let mapping = Mapping::open(&dir, "k.dat", MappingMode::CopyOnWrite, to_u64(PAGE), None).unwrap();

        assert!(!mapping.has_private_pages(), "untouched");
        assert_eq!(window(&mapping), content[PAGE..], "read in full");
        assert!(!mapping.has_private_pages(), "read in full");
    }

    #[test]
    fn one_written_byte_anywhere_in_a_copy_on_write_window_is_a_private_page() {
        let content = pattern(64 * PAGE);
        let (tmp, dir) = cache_with(&content, Arc::new(RealFs));
        for at in [0, 1, 5 * PAGE + 17, 63 * PAGE - 2 - PAGE / 2] {
            let mapping = Mapping::open(&dir, "k.dat", MappingMode::CopyOnWrite, to_u64(PAGE / 2), None).unwrap();

            write_byte(&mapping, at);

            assert!(mapping.has_private_pages(), "byte {at}");
        }
        assert_eq!(
            fs::read(tmp.path().join("k.dat")).unwrap(),
            content,
            "the file never changes"
        );
    }

    #[test]
    fn private_ranges_are_the_written_pages_clipped_to_the_window_and_merged() {
        let content = pattern(16 * PAGE);
        let (_tmp, dir) = cache_with(&content, Arc::new(RealFs));
        // The window starts half a page into the file, as a payload after a header would.
        let offset = PAGE / 2;
        let mapping = Mapping::open(&dir, "k.dat", MappingMode::CopyOnWrite, to_u64(offset), None).unwrap();
        let window_len = mapping.len();
        assert_eq!(mapping.private_ranges().unwrap(), Vec::<Range<usize>>::new());

        for at in [0, 3 * PAGE + 5, 4 * PAGE, 9 * PAGE, window_len - 1] {
            write_byte(&mapping, at);
        }

        // Window byte `at` lies in file page (offset + at) / PAGE; its page spans the window
        // bytes [page * PAGE - offset, (page + 1) * PAGE - offset), clipped to the window.
        let page_of = |at: usize| {
            let page = (offset + at) / PAGE;
            (page * PAGE).saturating_sub(offset)..((page + 1) * PAGE - offset).min(window_len)
        };
        let expected = vec![
            page_of(0),
            page_of(3 * PAGE + 5).start..page_of(4 * PAGE).end,
            page_of(9 * PAGE),
            page_of(window_len - 1),
        ];
        assert_eq!(mapping.private_ranges().unwrap(), expected);
        assert_eq!(mapping.window_bytes(0..2).unwrap(), [0xEE, content[offset + 1]]);
    }

    #[test]
    fn window_bytes_past_the_window_are_refused() {
        let (_tmp, dir) = cache_with(&pattern(PAGE), Arc::new(RealFs));
        let mapping = Mapping::open(&dir, "k.dat", MappingMode::ReadOnly, 10, None).unwrap();

        assert!(mapping.window_bytes(0..PAGE - 10).is_ok());
        assert!(matches!(
            mapping.window_bytes(0..PAGE - 9),
            Err(Error::SizeMismatch { .. })
        ));
    }

    #[test]
    fn shared_windows_never_report_private_pages() {
        let (_tmp, dir) = cache_with(&pattern(4 * PAGE), Arc::new(RealFs));
        let read_write = Mapping::open(&dir, "k.dat", MappingMode::ReadWrite, 0, None).unwrap();
        write_byte(&read_write, 10);
        let read_only = Mapping::open(&dir, "k.dat", MappingMode::ReadOnly, 0, None).unwrap();
        let empty = Mapping::open(&dir, "k.dat", MappingMode::CopyOnWrite, 0, Some(0)).unwrap();

        assert!(!read_write.has_private_pages());
        assert!(!read_only.has_private_pages());
        assert!(!empty.has_private_pages());
    }

    #[test]
    fn cached_pages_of_an_empty_range_maps_nothing() {
        let recording = Arc::new(RecordingFs::new());
        let (_tmp, dir) = cache_with(&pattern(100), recording.clone());
        let file = fs::File::open(dir.path_of("k.dat")).unwrap();
        recording.clear();

        let cached = cached_pages(dir.fs(), file.as_fd(), &dir.path_of("k.dat"), 0, 0).unwrap();

        assert!(cached.is_empty());
        assert_eq!(map_calls(&recording), 0);
    }

    #[test]
    fn mapping_keeps_the_old_bytes_after_the_file_is_replaced_by_rename() {
        let (tmp, dir) = cache_with(b"old-bytes", Arc::new(RealFs));
        let mapping = Mapping::open(&dir, "k.dat", MappingMode::ReadOnly, 0, None).unwrap();

        fs::write(tmp.path().join("new"), b"NEW-BYTES").unwrap();
        fs::rename(tmp.path().join("new"), tmp.path().join("k.dat")).unwrap();

        assert_eq!(window(&mapping), b"old-bytes");
    }
}
