//! Reading a range of a file once, in order, without copying it, optionally leaving the page cache
//! as it was found.
//!
//! The file is mapped read-only [`READ_WINDOW`] bytes at a time and each window is handed to the
//! caller (which hashes it) and unmapped before the next: the read adds at most one window to the
//! resident memory. Measured on this project's virtual machine (Linux 6.18, ext4, whose page cache
//! holds large folios), hashing straight from such windows ran as fast as a plain `read` into a
//! small buffer, while `pread` followed by the hash (the copy and the hash in turn) ran at half
//! that, and a second thread did not pay for its hand-offs.
//!
//! With [`CacheUse::LeaveAsFound`], which pages are cached is recorded (`mincore`)
//! [`RESIDENCY_LOOKAHEAD`] bytes ahead of the read, so before any readahead can reach them; the
//! uncached pages of each window are read ahead (`POSIX_FADV_WILLNEED`), and once the window is
//! unmapped `POSIX_FADV_DONTNEED` drops only its pages that were not cached before. A store far
//! larger than RAM can be read without evicting anyone's working set.
//!
//! [`ranges_equal`] reads two ranges side by side the same way, to tell whether they hold the
//! same bytes without holding either in memory.

use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::os::fd::BorrowedFd;
use std::path::Path;

use crate::checked::{add, to_u64};
use crate::copy::{Between, PIECE_CAP};
use crate::error::{Error, Op, Result};
use crate::fs::Fs;
use crate::mapping::{self, ReadWindow};

/// How much of the file is mapped at a time: the bound of the resident memory a read adds, large
/// enough that mapping and unmapping cost nothing next to the bytes.
pub const READ_WINDOW: u64 = 8 << 20;

/// How far ahead of the read page-cache residency is recorded: further than any readahead runs.
/// Random-access advice stops our own, but a readahead mark another reader left behind still
/// starts an asynchronous readahead of up to the device's `read_ahead_kb` (8 MiB on a virtio
/// disk), which must not make pages look cached before the read.
pub const RESIDENCY_LOOKAHEAD: u64 = 64 << 20;

/// What a sequential read leaves in the page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// The kernel decides, as for any read.
    Keep,
    /// The pages the read brought in are dropped again; pages cached before it stay.
    LeaveAsFound,
}

/// One end of a sequential read: the open file, its path (for errors) and the range.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The open file (readable).
    pub fd: BorrowedFd<'a>,
    /// Its path, for errors.
    pub path: &'a Path,
    /// Where the range starts.
    pub offset: u64,
    /// How many bytes it holds.
    pub len: u64,
}

/// Reads `source`'s range in order, handing each window (at most [`READ_WINDOW`] bytes) to
/// `visit` on the calling thread.
///
/// # Errors
/// [`Error::SizeMismatch`] when the file is shorter than the range (checked first);
/// [`Error::Io`] with [`Op::Stat`] or [`Op::Map`]; whatever `visit` returns.
pub fn read_sequential(
    fs: &dyn Fs,
    source: Source<'_>,
    cache: CacheUse,
    visit: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let mut pass = Pass::start(fs, source, cache)?;
    let end = pass.end;
    let mut at = source.offset;
    while at < end {
        let window_end = end.min((at - at % READ_WINDOW).saturating_add(READ_WINDOW));
        let window = pass.window(at, window_end)?;
        let visited = visit(window.bytes());
        drop(window);
        pass.done_until(window_end);
        visited?;
        at = window_end;
    }
    Ok(())
}

/// Whether two ranges hold the same bytes: `false` at once for different lengths, else read
/// side by side in windows of at most [`READ_WINDOW`] bytes each (so the read adds at most two
/// windows to the resident memory), stopping at the first difference. `between` runs about
/// every [`PIECE_CAP`] bytes compared with the bytes compared since its previous call; it may
/// stop the comparison.
///
/// # Errors
/// As [`read_sequential`], for either range; whatever `between` returns.
pub fn ranges_equal(
    fs: &dyn Fs,
    first: Source<'_>,
    second: Source<'_>,
    cache: CacheUse,
    between: Between<'_>,
) -> Result<bool> {
    if first.len != second.len {
        return Ok(false);
    }
    let mut passes = [Pass::start(fs, first, cache)?, Pass::start(fs, second, cache)?];
    let mut done = 0;
    let mut unreported = 0;
    while done < first.len {
        if unreported >= to_u64(PIECE_CAP) {
            between(unreported)?;
            unreported = 0;
        }
        let at = add(first.offset, done)?;
        let step = (first.len - done).min(READ_WINDOW - at % READ_WINDOW);
        let [one, other] = &mut passes;
        let (one_at, other_at) = (at, add(second.offset, done)?);
        let one_window = one.window(one_at, one_at + step)?;
        let other_window = other.window(other_at, other_at + step)?;
        let same = one_window.bytes() == other_window.bytes();
        drop((one_window, other_window));
        one.done_until(one_at + step);
        other.done_until(other_at + step);
        if !same {
            return Ok(false);
        }
        done += step;
        unreported += step;
    }
    Ok(true)
}

/// One range being read in order: maps its windows and, with [`CacheUse::LeaveAsFound`], keeps
/// the record of which pages to drop again.
struct Pass<'a> {
    fs: &'a dyn Fs,
    source: Source<'a>,
    end: u64,
    residency: Option<Residency>,
}

impl<'a> Pass<'a> {
    /// Checks that the file holds the range (before anything is read).
    fn start(fs: &'a dyn Fs, source: Source<'a>, cache: CacheUse) -> Result<Self> {
        let end = add(source.offset, source.len)?;
        let file_len = fs
            .fstat(source.fd)
            .map_err(|err| Error::io(Op::Stat, source.path, err))?
            .len;
        if file_len < end {
            return Err(Error::SizeMismatch {
                path: source.path.into(),
                expected: end,
                actual: file_len,
            });
        }
        let residency = (cache == CacheUse::LeaveAsFound).then(|| Residency::starting_at(source.offset));
        Ok(Self {
            fs,
            source,
            end,
            residency,
        })
    }

    /// Maps `[at, until)` of the range, recording residency ahead of it first.
    fn window(&mut self, at: u64, until: u64) -> Result<ReadWindow> {
        if let Some(residency) = self.residency.as_mut() {
            let lookahead = self.end.min(until.saturating_add(RESIDENCY_LOOKAHEAD));
            residency.record_until(self.fs, self.source, lookahead)?;
            residency.read_ahead(self.source.fd, until);
        }
        ReadWindow::map(self.fs, self.source.fd, self.source.path, at, until - at)
    }

    /// The bytes before `until` were read (their window unmapped): drop the pages they brought in.
    fn done_until(&mut self, until: u64) {
        if let Some(residency) = self.residency.as_mut() {
            residency.restore_until(self.source.fd, until);
        }
    }
}

/// Which pages were cached before the read reached them, from the first page not restored yet.
struct Residency {
    /// Start of the first page not restored yet.
    from: u64,
    /// One entry per page from `from` on.
    cached: VecDeque<bool>,
}

impl Residency {
    fn starting_at(offset: u64) -> Self {
        Self {
            from: offset - offset % page_size(),
            cached: VecDeque::new(),
        }
    }

    /// End of the recorded pages.
    fn recorded_to(&self) -> u64 {
        self.from + to_u64(self.cached.len()) * page_size()
    }

    /// Records the pages up to the one holding byte `until - 1`, a window at a time: a window
    /// counted (`cachestat`) as wholly cached or wholly uncached needs no page-by-page look.
    fn record_until(&mut self, fs: &dyn Fs, source: Source<'_>, until: u64) -> Result<()> {
        let mut start = self.recorded_to();
        while start < until {
            let stop = until.min((start - start % READ_WINDOW).saturating_add(READ_WINDOW));
            let pages = (stop - start).div_ceil(page_size());
            match mapping::cached_page_count(source.fd, start, stop - start) {
                Some(0) => self.cached.extend((0..pages).map(|_| false)),
                Some(count) if count >= pages => self.cached.extend((0..pages).map(|_| true)),
                _ => self
                    .cached
                    .extend(mapping::cached_pages(fs, source.fd, source.path, start, stop - start)?),
            }
            start = self.recorded_to();
        }
        Ok(())
    }

    /// Asks the kernel to start reading the pages before `until` that are not cached (advice
    /// only: a cached window costs nothing, and a failure leaves the reads to fetch them).
    fn read_ahead(&self, fd: BorrowedFd<'_>, until: u64) {
        for_each_run(self.from, self.pages_before(until), false, |offset, len| {
            let _ = rustix::fs::fadvise(fd, offset, NonZeroU64::new(len), rustix::fs::Advice::WillNeed);
        });
    }

    fn pages_before(&self, until: u64) -> impl Iterator<Item = &bool> {
        let pages = usize::try_from((until - self.from).div_ceil(page_size())).unwrap_or(usize::MAX);
        self.cached.iter().take(pages)
    }

    /// Drops the pages before `until` (rounded up to a page) that were not cached before.
    fn restore_until(&mut self, fd: BorrowedFd<'_>, until: u64) {
        let pages = usize::try_from((until - self.from).div_ceil(page_size()))
            .unwrap_or(usize::MAX)
            .min(self.cached.len());
        for_each_run(self.from, self.cached.iter().take(pages), false, |offset, len| {
            // Advice only, outside the seam: a failure leaves pages cached and changes nothing else.
            let _ = rustix::fs::fadvise(fd, offset, NonZeroU64::new(len), rustix::fs::Advice::DontNeed);
        });
        self.cached.drain(..pages);
        self.from += to_u64(pages) * page_size();
    }
}

fn page_size() -> u64 {
    to_u64(rustix::param::page_size())
}

/// Calls `act(offset, len)` for each run of consecutive pages from `start` whose flag is `wanted`.
fn for_each_run<'a>(start: u64, flags: impl Iterator<Item = &'a bool>, wanted: bool, mut act: impl FnMut(u64, u64)) {
    let page = page_size();
    let mut run: Option<(u64, u64)> = None;
    let mut offset = start;
    for &flag in flags {
        match (run.as_mut(), flag == wanted) {
            (Some((_, len)), true) => *len += page,
            (None, true) => run = Some((offset, page)),
            (Some(&mut (run_start, len)), false) => {
                act(run_start, len);
                run = None;
            }
            (None, false) => {}
        }
        offset += page;
    }
    if let Some((run_start, len)) = run {
        act(run_start, len);
    }
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::fs::{self, File};
    use std::os::fd::AsFd;

    use super::*;
    use crate::fs::RealFs;

    const PAGE: usize = 4096;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|index| (index % 251) as u8).collect()
    }

    fn written(content: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("k.npy");
        fs::write(&path, content).unwrap();
        File::open(&path).unwrap().sync_all().unwrap();
        (tmp, path)
    }

    fn collect(path: &Path, offset: usize, len: usize, cache: CacheUse) -> Result<(Vec<u8>, Vec<usize>)> {
        let file = File::open(path).unwrap();
        let source = Source {
            fd: file.as_fd(),
            path,
            offset: to_u64(offset),
            len: to_u64(len),
        };
        let mut bytes = Vec::new();
        let mut pieces = Vec::new();
        read_sequential(&RealFs, source, cache, &mut |piece| {
            bytes.extend_from_slice(piece);
            pieces.push(piece.len());
            Ok(())
        })?;
        Ok((bytes, pieces))
    }

    #[test]
    fn hands_out_exactly_the_range_in_order_in_pieces_of_at_most_one_window() {
        let content = pattern(2 * READ_WINDOW as usize + 3 * PAGE + 17);
        let (_tmp, path) = written(&content);

        for (offset, len) in [
            (0, content.len()),
            (PAGE + 7, READ_WINDOW as usize + 1),
            (5, 2 * READ_WINDOW as usize),
            (100, 10),
            (100, 0),
        ] {
            for cache in [CacheUse::Keep, CacheUse::LeaveAsFound] {
                let (bytes, pieces) = collect(&path, offset, len, cache).unwrap();

                assert_eq!(bytes, content[offset..offset + len], "{offset}+{len} {cache:?}");
                assert!(pieces.iter().all(|&piece| to_u64(piece) <= READ_WINDOW), "{pieces:?}");
            }
        }
    }

    fn compare(first: (&Path, usize), second: (&Path, usize), len: usize) -> bool {
        let (one, other) = (File::open(first.0).unwrap(), File::open(second.0).unwrap());
        let one = Source {
            fd: one.as_fd(),
            path: first.0,
            offset: to_u64(first.1),
            len: to_u64(len),
        };
        let other = Source {
            fd: other.as_fd(),
            path: second.0,
            offset: to_u64(second.1),
            len: to_u64(len),
        };
        ranges_equal(&RealFs, one, other, CacheUse::LeaveAsFound, &mut |_| Ok(())).unwrap()
    }

    #[test]
    fn equal_ranges_at_different_offsets_compare_equal_and_one_changed_byte_anywhere_does_not() {
        let content = pattern(2 * READ_WINDOW as usize + 3 * PAGE + 17);
        let (_tmp, path) = written(&content);
        let shifted_path = path.with_file_name("shifted");
        fs::write(&shifted_path, [vec![9u8; PAGE + 3], content.clone()].concat()).unwrap();
        let len = content.len();

        assert!(compare((&path, 0), (&shifted_path, PAGE + 3), len));
        for flipped in [0, READ_WINDOW as usize - 1, READ_WINDOW as usize, len - 1] {
            let mut changed = content.clone();
            changed[flipped] ^= 0x10;
            fs::write(&shifted_path, &changed).unwrap();
            assert!(!compare((&path, 0), (&shifted_path, 0), len), "byte {flipped}");
        }
    }

    #[test]
    fn ranges_of_different_lengths_are_not_equal() {
        let (_tmp, path) = written(&pattern(100));
        let file = File::open(&path).unwrap();
        let source = |len| Source {
            fd: file.as_fd(),
            path: &path,
            offset: 0,
            len,
        };

        let equal = ranges_equal(&RealFs, source(10), source(11), CacheUse::Keep, &mut |_| Ok(())).unwrap();

        assert!(!equal);
    }

    #[test]
    fn a_range_past_the_end_is_a_size_mismatch_before_anything_is_read() {
        let (_tmp, path) = written(&pattern(100));
        let mut visits = 0;
        let file = File::open(&path).unwrap();
        let source = Source {
            fd: file.as_fd(),
            path: &path,
            offset: 50,
            len: 51,
        };

        let err = read_sequential(&RealFs, source, CacheUse::Keep, &mut |_| {
            visits += 1;
            Ok(())
        })
        .unwrap_err();

        assert!(
            matches!(
                err,
                Error::SizeMismatch {
                    expected: 101,
                    actual: 100,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(visits, 0);
    }

    #[test]
    fn a_failing_visit_stops_the_read_with_its_error() {
        let (_tmp, path) = written(&pattern(3 * READ_WINDOW as usize));
        let mut visits = 0;
        let file = File::open(&path).unwrap();
        let source = Source {
            fd: file.as_fd(),
            path: &path,
            offset: 0,
            len: 3 * READ_WINDOW,
        };

        let err = read_sequential(&RealFs, source, CacheUse::Keep, &mut |_| {
            visits += 1;
            Err(Error::SizeOverflow)
        })
        .unwrap_err();

        assert!(matches!(err, Error::SizeOverflow), "{err}");
        assert_eq!(visits, 1);
    }

    /// Which pages of the file are in the page cache now.
    fn cached(path: &Path) -> Vec<bool> {
        let file = File::open(path).unwrap();
        let len = file.metadata().unwrap().len();
        mapping::cached_pages(&RealFs, file.as_fd(), path, 0, len).unwrap()
    }

    fn evict(path: &Path) {
        let file = File::open(path).unwrap();
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    }

    #[test]
    fn leave_as_found_drops_the_pages_it_brought_in_and_keeps_those_cached_before() {
        let content = pattern(READ_WINDOW as usize + 64 * PAGE);
        let (_tmp, path) = written(&content);
        evict(&path);
        if cached(&path).iter().any(|&page| page) {
            eprintln!("skipped: this file system keeps pages cached after POSIX_FADV_DONTNEED");
            return;
        }
        let mut warm = vec![0u8; 40 * PAGE];
        rustix::io::pread(File::open(&path).unwrap(), &mut warm, 0).unwrap();
        let before = cached(&path);

        let (bytes, _) = collect(&path, 0, content.len(), CacheUse::LeaveAsFound).unwrap();

        assert_eq!(bytes, content);
        assert!(
            before[..40].iter().all(|&page| page),
            "the warm prefix was cached before"
        );
        assert_eq!(
            cached(&path),
            before,
            "exactly the pages cached before are cached after"
        );
    }

    #[test]
    fn leave_as_found_keeps_a_wholly_cached_file_cached_and_an_uncached_one_uncached() {
        let content = pattern(2 * READ_WINDOW as usize + 5 * PAGE);
        let (_tmp, path) = written(&content);
        evict(&path);
        if cached(&path).iter().any(|&page| page) {
            eprintln!("skipped: this file system keeps pages cached after POSIX_FADV_DONTNEED");
            return;
        }

        collect(&path, 0, content.len(), CacheUse::LeaveAsFound).unwrap();
        let after_cold = cached(&path);
        collect(&path, 0, content.len(), CacheUse::Keep).unwrap();
        collect(&path, 0, content.len(), CacheUse::LeaveAsFound).unwrap();
        let after_warm = cached(&path);

        assert!(after_cold.iter().all(|&page| !page), "a cold file is left cold");
        assert!(after_warm.iter().all(|&page| page), "a warm file is left warm");
    }

    #[test]
    fn keep_leaves_the_pages_it_read_cached() {
        let (_tmp, path) = written(&pattern(16 * PAGE));
        evict(&path);

        collect(&path, 0, 16 * PAGE, CacheUse::Keep).unwrap();

        assert!(cached(&path).iter().all(|&page| page));
    }
}
