//! Block writes into a reserved `.npy` temp at their own offsets, by writers in any process,
//! committed by the owner once every block is in.
//!
//! The owner (the process that will commit) becomes the key's writer ([`crate::keylock`]),
//! creates `<key>.npy.tmp`, reserves header + payload + an 8-byte trailer and writes the header
//! and, in the trailer, a nonce it chose: a [`Region`]. Block writers ([`write_block`]) know
//! only the directory, the temp's name, the nonce and where their block lies in the array.
//! Each opens the existing temp for writing without following a link and without creating
//! it, checks its size and trailer (a temp of an aborted or replaced reservation fails with
//! `ESTALE`, so a straggler never writes into a newer reservation of the same key), and
//! `pwrite`s its block in C order: one run when the block spans whole trailing rows,
//! otherwise one run per partial row, gathered from any memory layout. The owner then drops
//! the trailer, fsyncs the temp (which flushes every writer's pages of it), writes the sidecar
//! temp and renames the pair with one directory fsync: [`Region::commit`]. Dropping an
//! uncommitted region removes its temp.

use std::num::NonZeroU64;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::OFlags;
use rustix::io::Errno;

use crate::atomic::{PendingFile, RenameGroup};
use crate::checked::{add, to_u64, to_usize};
use crate::commit::ArraySpec;
use crate::copy::{self, BOUNCE_BUFFER_CAP};
use crate::dir::CacheDir;
use crate::error::{Error, Op, Result};
use crate::fs::FileKind;
use crate::gather::{GatherCursor, StridedBytes};
use crate::keylock::KeyLock;
use crate::names::{PairNames, temp_name, validate_name};
use crate::npy;

/// Bytes of the nonce trailer after the payload while a region is open.
pub const NONCE_LEN: u64 = 8;

/// A reserved `.npy` temp of one key, written block by block, committed by its owner.
#[derive(Debug)]
pub struct Region {
    names: PairNames,
    file: PendingFile,
    lock: Arc<KeyLock>,
    data_offset: u64,
    nbytes: u64,
    nonce: u64,
}

impl CacheDir {
    /// Reserves `<key>.npy.tmp` for a payload of `nbytes` described by `spec`: becomes the
    /// key's writer (waiting for another one to finish), creates the temp (a leftover of the
    /// key is replaced), reserves header + payload + trailer and writes the header and `nonce`.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::InvalidHeader`], the errors of
    /// [`CacheDir::lock_key`], [`PendingFile::create`], [`PendingFile::reserve`] and writing.
    /// Nothing is left behind on error.
    pub fn reserve_region(&self, key: &str, spec: ArraySpec<'_>, nbytes: u64, nonce: u64) -> Result<Region> {
        let names = PairNames::of(key)?;
        let header = npy::encode_header(spec.descr, spec.fortran_order, spec.shape, nbytes).map_err(|reason| {
            Error::InvalidHeader {
                path: self.path_of(&names.npy),
                reason,
            }
        })?;
        let lock = Arc::new(self.lock_key(key)?);
        let data_offset = to_u64(header.len());
        let end = add(data_offset, nbytes)?;
        let file = PendingFile::create(self, &names.npy)?;
        file.reserve(add(end, NONCE_LEN)?)?;
        file.write_all_at(&header, 0)?;
        file.write_all_at(&nonce.to_le_bytes(), end)?;
        Ok(Region {
            names,
            file,
            lock,
            data_offset,
            nbytes,
            nonce,
        })
    }
}

impl Region {
    /// The name block writers open.
    pub fn temp_name(&self) -> String {
        temp_name(&self.names.npy)
    }

    /// Where the payload starts in the temp.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The payload size.
    pub fn nbytes(&self) -> u64 {
        self.nbytes
    }

    /// The nonce block writers must find in the trailer.
    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    /// Drops the trailer, fsyncs the temp, writes and fsyncs the sidecar temp from `meta`,
    /// renames `.npy` then `.meta.json` and fsyncs the directory once. Call it only when
    /// every block was written.
    ///
    /// # Errors
    /// [`Error::Io`] with [`Op::Reserve`] (the truncation), [`Op::Fsync`], the errors of the
    /// sidecar temp, [`Error::Rename`] or [`Op::DirFsync`]; unless the renames happened, both
    /// temps are removed and the previous pair is intact.
    pub fn commit(self, meta: &[u8]) -> Result<()> {
        let Self { names, file, lock, .. } = self;
        let end = add(self.data_offset, self.nbytes)?;
        let dir = file.dir().clone();
        dir.fs()
            .truncate(file.fd(), end)
            .map_err(|err| Error::io(Op::Reserve, file.temp_path(), err))?;
        let npy = file.close_synced(Arc::clone(&lock))?;
        let meta_file = PendingFile::create(&dir, &names.meta)?;
        meta_file.write_all_at(meta, 0)?;
        let meta = meta_file.close_synced(lock)?;
        let mut group = RenameGroup::new(&dir);
        group.push(npy);
        group.push(meta);
        group.commit().map_err(Error::from)
    }
}

/// Where a block lies in an array stored in C order: the array's shape, the block's first
/// index and its extents, all per axis.
#[derive(Debug, Clone, Copy)]
pub struct BlockPlacement<'a> {
    /// The whole array's shape.
    pub shape: &'a [u64],
    /// The index of the block's first element.
    pub start: &'a [u64],
    /// The block's extent along each axis.
    pub extent: &'a [u64],
    /// Bytes per element.
    pub itemsize: u64,
}

/// The contiguous runs of a placed block in the file: `count` runs of `run_bytes` each.
#[derive(Debug)]
struct Runs {
    /// Axes before the run's own axis (which is `outer_extent.len()`; 0 for a scalar).
    outer_extent: Vec<u64>,
    outer_start: Vec<u64>,
    /// Bytes between consecutive indices of each outer axis.
    outer_stride: Vec<u64>,
    base: u64,
    run_bytes: u64,
    count: u64,
}

impl Runs {
    fn of(placement: BlockPlacement<'_>) -> Result<Self> {
        let BlockPlacement {
            shape,
            start,
            extent,
            itemsize,
        } = placement;
        if start.len() != shape.len() || extent.len() != shape.len() {
            return Err(Error::InvalidLayout {
                reason: "shape, start and extent differ in length",
            });
        }
        let inside = shape
            .iter()
            .zip(start)
            .zip(extent)
            .all(|((&len, &first), &count)| first.checked_add(count).is_some_and(|end| end <= len));
        if !inside {
            return Err(Error::InvalidLayout {
                reason: "the block reaches past the array",
            });
        }
        // Byte strides of the whole array in C order.
        let mut strides = vec![0u64; shape.len()];
        let mut stride = itemsize;
        for (axis, &len) in shape.iter().enumerate().rev() {
            strides[axis] = stride;
            stride = stride.checked_mul(len).ok_or(Error::SizeOverflow)?;
        }
        // A run spans every trailing axis the block covers whole, plus the axis before them.
        let mut axis = shape.len();
        while axis > 1 && start[axis - 1] == 0 && extent[axis - 1] == shape[axis - 1] {
            axis -= 1;
        }
        let run_axis = axis.saturating_sub(1);
        let run_bytes = match shape.len() {
            0 => itemsize,
            _ => extent[run_axis]
                .checked_mul(strides[run_axis])
                .ok_or(Error::SizeOverflow)?,
        };
        let count = extent[..run_axis]
            .iter()
            .try_fold(1u64, |acc, &len| acc.checked_mul(len))
            .ok_or(Error::SizeOverflow)?;
        let base = match shape.len() {
            0 => 0,
            _ => start[run_axis]
                .checked_mul(strides[run_axis])
                .ok_or(Error::SizeOverflow)?,
        };
        Ok(Self {
            outer_extent: extent[..run_axis].to_vec(),
            outer_start: start[..run_axis].to_vec(),
            outer_stride: strides[..run_axis].to_vec(),
            base,
            run_bytes,
            count: if run_bytes == 0 { 0 } else { count },
        })
    }

    fn total(&self) -> Result<u64> {
        self.run_bytes.checked_mul(self.count).ok_or(Error::SizeOverflow)
    }

    /// The payload offset of run `index` (in C order over the outer axes).
    fn offset_of(&self, mut index: u64) -> u64 {
        let mut offset = self.base;
        for axis in (0..self.outer_extent.len()).rev() {
            let extent = self.outer_extent[axis];
            let within = index % extent;
            index /= extent;
            offset += (self.outer_start[axis] + within) * self.outer_stride[axis];
        }
        offset
    }
}

/// The bytes of a block, in the layout they have in memory.
#[derive(Debug)]
pub enum BlockSource<'a> {
    /// One C-contiguous run.
    Contiguous(&'a [u8]),
    /// Items at byte strides, gathered into C order.
    Strided(StridedBytes<'a>),
}

impl BlockSource<'_> {
    fn byte_len(&self) -> u64 {
        match self {
            BlockSource::Contiguous(bytes) => to_u64(bytes.len()),
            BlockSource::Strided(strided) => strided.byte_len(),
        }
    }
}

/// What a block writer knows of the region it writes into.
#[derive(Debug, Clone, Copy)]
pub struct RegionTarget<'a> {
    /// The temp's name in its directory.
    pub temp: &'a str,
    /// The nonce of the reservation.
    pub nonce: u64,
    /// Where the payload starts.
    pub data_offset: u64,
    /// The payload size.
    pub nbytes: u64,
}

/// Writes `source`, the block at `placement`, into the reserved temp `target` in `dir`.
///
/// # Errors
/// [`Error::InvalidName`]; [`Error::InvalidLayout`] for a block outside the array or an array
/// whose size is not the reserved payload's,
/// [`Error::SizeMismatch`] when `source` is not the block's size; [`Error::Io`] with
/// [`Op::Open`] (`ELOOP` for a link, `ENOENT` when the temp is gone), or with `ESTALE` when the
/// temp is not the reservation `target` names (another size, another nonce, not a regular
/// file); [`Op::Read`] / [`Op::Write`] for failed calls.
pub fn write_block(
    dir: &CacheDir,
    target: RegionTarget<'_>,
    placement: BlockPlacement<'_>,
    source: &BlockSource<'_>,
) -> Result<()> {
    validate_name(target.temp)?;
    // A shape larger than the reservation would place runs past the payload, over the nonce.
    let array_bytes = placement
        .shape
        .iter()
        .try_fold(placement.itemsize, |bytes, &len| bytes.checked_mul(len))
        .ok_or(Error::SizeOverflow)?;
    if array_bytes != target.nbytes {
        return Err(Error::InvalidLayout {
            reason: "the array's shape and itemsize do not match the reserved payload",
        });
    }
    let runs = Runs::of(placement)?;
    let expected = runs.total()?;
    let path = dir.path_of(target.temp);
    if source.byte_len() != expected {
        return Err(Error::SizeMismatch {
            path,
            expected,
            actual: source.byte_len(),
        });
    }
    let fd = open_reserved(dir, target)?;
    let mut written = 0u64;
    let mut put = |piece: &[u8]| -> Result<()> {
        let mut piece = piece;
        while !piece.is_empty() {
            let run = written / runs.run_bytes;
            let within = written % runs.run_bytes;
            let take = piece.len().min(to_usize(runs.run_bytes - within)?);
            let (head, rest) = piece.split_at(take);
            let at = add(target.data_offset, add(runs.offset_of(run), within)?)?;
            copy::write_all_at(dir.fs(), fd.as_fd(), &path, head, at)?;
            written += to_u64(take);
            piece = rest;
        }
        Ok(())
    };
    match source {
        BlockSource::Contiguous(bytes) => put(bytes)?,
        BlockSource::Strided(strided) => {
            let mut buffer = vec![0u8; to_usize(expected)?.clamp(1, BOUNCE_BUFFER_CAP)];
            let mut cursor = GatherCursor::default();
            loop {
                let filled = strided.gather(&mut cursor, &mut buffer);
                if filled == 0 {
                    break;
                }
                put(buffer.get(..filled).unwrap_or_default())?;
            }
        }
    }
    start_writeback(fd.as_fd(), target.data_offset, &runs);
    Ok(())
}

/// Asks the kernel to start writing the block's pages back now, without waiting, so that the
/// owner's final fsync finds most of the file already on disk instead of flushing it alone; the
/// written pages also leave the page cache once clean (a stored array is usually larger than
/// what a worker should keep cached). A hint: a refusal changes nothing and is ignored, which is
/// why it bypasses the [`crate::fs::Fs`] seam.
fn start_writeback(fd: BorrowedFd<'_>, data_offset: u64, runs: &Runs) {
    let Some(last) = runs.count.checked_sub(1) else {
        return;
    };
    let first = data_offset + runs.offset_of(0);
    let end = data_offset + runs.offset_of(last) + runs.run_bytes;
    let _ = rustix::fs::fadvise(fd, first, NonZeroU64::new(end - first), rustix::fs::Advice::DontNeed);
}

/// Opens the reserved temp (no link, no creation) and checks it is `target`'s.
fn open_reserved(dir: &CacheDir, target: RegionTarget<'_>) -> Result<OwnedFd> {
    let fs = dir.fs();
    let path = dir.path_of(target.temp);
    // Read-write: the trailer is read through the same descriptor the block is written with.
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = fs
        .open(dir.fd(), target.temp, flags, 0)
        .map_err(|err| Error::io(Op::Open, &path, err))?;
    let stat = fs.fstat(fd.as_fd()).map_err(|err| Error::io(Op::Stat, &path, err))?;
    let end = add(target.data_offset, target.nbytes)?;
    let stale = || Error::io(Op::Open, &path, std::io::Error::from(Errno::STALE));
    if stat.kind != FileKind::File || stat.len != add(end, NONCE_LEN)? {
        return Err(stale());
    }
    if read_nonce(dir, fd.as_fd(), &path, end)? != target.nonce {
        return Err(stale());
    }
    Ok(fd)
}

/// The trailer of the reserved temp open as `fd`, which holds `end` bytes before it.
fn read_nonce(dir: &CacheDir, fd: BorrowedFd<'_>, path: &std::path::Path, end: u64) -> Result<u64> {
    let mut bytes = [0u8; 8];
    copy::read_exact_at(dir.fs(), fd, path, &mut bytes, end)?;
    Ok(u64::from_le_bytes(bytes))
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::NPY_DATA_ALIGN;
    use crate::dir::open_temp_dir;

    const SHAPE: [u64; 2] = [5, 6];
    const ITEM: u64 = 2;

    fn spec() -> ArraySpec<'static> {
        ArraySpec {
            descr: "'<u2'",
            fortran_order: false,
            shape: &SHAPE,
        }
    }

    /// The C-order bytes of the (5, 6) u16 array whose element (i, j) is 10 i + j.
    fn whole() -> Vec<u8> {
        (0..5u16)
            .flat_map(|row| (0..6u16).flat_map(move |col| (row * 10 + col).to_le_bytes()))
            .collect()
    }

    /// The block [rows, cols] of `whole()` in C order.
    fn block(rows: std::ops::Range<u16>, cols: std::ops::Range<u16>) -> Vec<u8> {
        rows.flat_map(|row| cols.clone().flat_map(move |col| (row * 10 + col).to_le_bytes()))
            .collect()
    }

    fn target(region: &Region) -> (String, u64, u64, u64) {
        (
            region.temp_name(),
            region.nonce(),
            region.data_offset(),
            region.nbytes(),
        )
    }

    fn write(
        dir: &CacheDir,
        at: &(String, u64, u64, u64),
        start: [u64; 2],
        extent: [u64; 2],
        bytes: &[u8],
    ) -> Result<()> {
        write_source(dir, at, start, extent, &BlockSource::Contiguous(bytes))
    }

    fn write_source(
        dir: &CacheDir,
        at: &(String, u64, u64, u64),
        start: [u64; 2],
        extent: [u64; 2],
        source: &BlockSource<'_>,
    ) -> Result<()> {
        write_block(
            dir,
            RegionTarget {
                temp: &at.0,
                nonce: at.1,
                data_offset: at.2,
                nbytes: at.3,
            },
            BlockPlacement {
                shape: &SHAPE,
                start: &start,
                extent: &extent,
                itemsize: ITEM,
            },
            source,
        )
    }

    #[test]
    fn blocks_of_partial_rows_land_at_their_c_order_offsets_and_commit_as_a_pair() {
        let (tmp, dir) = open_temp_dir();
        let region = dir.reserve_region("k", spec(), 60, 42).unwrap();
        let at = target(&region);
        // Chunks (2, 4) over (5, 6): partial rows at the right edge and a short last row.
        for rows in [0u16..2, 2..4, 4..5] {
            for cols in [0u16..4, 4..6] {
                let start = [u64::from(rows.start), u64::from(cols.start)];
                let extent = [u64::from(rows.end - rows.start), u64::from(cols.end - cols.start)];
                write(&dir, &at, start, extent, &block(rows.clone(), cols)).unwrap();
            }
        }

        region.commit(b"{\"k\": 1}").unwrap();

        let npy = fs::read(tmp.path().join("k.npy")).unwrap();
        assert_eq!(npy.len() as u64, NPY_DATA_ALIGN + 60, "the nonce trailer is gone");
        assert_eq!(&npy[NPY_DATA_ALIGN as usize..], whole().as_slice());
        assert_eq!(fs::read(tmp.path().join("k.meta.json")).unwrap(), b"{\"k\": 1}");
        assert!(!tmp.path().join("k.npy.tmp").exists());
        assert!(dir.try_lock_key("k").unwrap().is_some(), "the commit released the key");
    }

    #[test]
    fn a_strided_block_is_gathered_into_c_order() {
        let (tmp, dir) = open_temp_dir();
        let region = dir.reserve_region("k", spec(), 60, 7).unwrap();
        let at = target(&region);
        // The whole array held transposed in memory: (6, 5) C order viewed as (5, 6).
        let memory: Vec<u8> = (0..6u16)
            .flat_map(|col| (0..5u16).flat_map(move |row| (row * 10 + col).to_le_bytes()))
            .collect();
        let source = BlockSource::Strided(StridedBytes::new(&memory, 0, &[5, 6], &[2, 10], 2).unwrap());

        write_source(&dir, &at, [0, 0], SHAPE, &source).unwrap();
        region.commit(b"{}").unwrap();

        let npy = fs::read(tmp.path().join("k.npy")).unwrap();
        assert_eq!(&npy[NPY_DATA_ALIGN as usize..], whole().as_slice());
    }

    #[test]
    fn a_writer_of_an_aborted_or_replaced_reservation_gets_estale_and_writes_nothing() {
        let (tmp, dir) = open_temp_dir();
        let first = dir.reserve_region("k", spec(), 60, 1).unwrap();
        let old = target(&first);
        drop(first);
        let second = dir.reserve_region("k", spec(), 60, 2).unwrap();

        let err = write(&dir, &old, [0, 0], [1, 6], &block(0..1, 0..6)).unwrap_err();

        assert_eq!(err.raw_os_error(), Some(Errno::STALE.raw_os_error()), "{err}");
        let reserved = fs::read(tmp.path().join("k.npy.tmp")).unwrap();
        assert!(
            reserved[NPY_DATA_ALIGN as usize..NPY_DATA_ALIGN as usize + 60]
                .iter()
                .all(|&byte| byte == 0)
        );
        drop(second);
    }

    #[test]
    fn a_dropped_region_removes_its_temp_and_frees_the_key() {
        let (tmp, dir) = open_temp_dir();
        let region = dir.reserve_region("k", spec(), 60, 1).unwrap();
        let at = target(&region);

        drop(region);

        assert!(!tmp.path().join("k.npy.tmp").exists());
        assert!(dir.try_lock_key("k").unwrap().is_some());
        let err = write(&dir, &at, [0, 0], [1, 6], &block(0..1, 0..6)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::NOENT.raw_os_error()), "{err}");
    }

    #[test]
    fn a_link_at_the_temp_name_is_never_written_through() {
        let (tmp, dir) = open_temp_dir();
        let outside = tempfile::tempdir().unwrap();
        let precious = outside.path().join("precious");
        fs::write(&precious, vec![9u8; 5000]).unwrap();
        symlink(&precious, tmp.path().join("k.npy.tmp")).unwrap();
        let at = ("k.npy.tmp".to_owned(), 1, NPY_DATA_ALIGN, 60);

        let err = write(&dir, &at, [0, 0], [1, 6], &block(0..1, 0..6)).unwrap_err();

        assert_eq!(err.raw_os_error(), Some(Errno::LOOP.raw_os_error()), "{err}");
        assert_eq!(fs::read(&precious).unwrap(), vec![9u8; 5000]);
    }

    #[test]
    fn a_block_outside_the_array_or_of_the_wrong_size_is_refused_before_io() {
        let (_tmp, dir) = open_temp_dir();
        let region = dir.reserve_region("k", spec(), 60, 1).unwrap();
        let at = target(&region);

        let outside = write(&dir, &at, [4, 0], [2, 6], &[0; 24]).unwrap_err();
        let short = write(&dir, &at, [0, 0], [1, 6], &[0; 10]).unwrap_err();

        assert!(matches!(outside, Error::InvalidLayout { .. }), "{outside}");
        assert!(
            matches!(
                short,
                Error::SizeMismatch {
                    expected: 12,
                    actual: 10,
                    ..
                }
            ),
            "{short}"
        );
    }

    #[test]
    fn an_array_larger_than_the_reserved_payload_is_refused_before_io() {
        let (tmp, dir) = open_temp_dir();
        let region = dir.reserve_region("k", spec(), 48, 1).unwrap();
        let before = fs::read(tmp.path().join(region.temp_name())).unwrap();

        let err = write(&dir, &target(&region), [0, 0], [1, 6], &block(0..1, 0..6)).unwrap_err();

        assert!(matches!(err, Error::InvalidLayout { .. }), "{err}");
        assert_eq!(fs::read(tmp.path().join(region.temp_name())).unwrap(), before);
    }

    #[test]
    fn runs_span_whole_trailing_axes_and_split_partial_ones() {
        let whole_rows = Runs::of(BlockPlacement {
            shape: &[4, 3, 2],
            start: &[1, 0, 0],
            extent: &[2, 3, 2],
            itemsize: 8,
        })
        .unwrap();
        let partial = Runs::of(BlockPlacement {
            shape: &[4, 3, 2],
            start: &[1, 1, 0],
            extent: &[2, 2, 2],
            itemsize: 8,
        })
        .unwrap();
        let scalar = Runs::of(BlockPlacement {
            shape: &[],
            start: &[],
            extent: &[],
            itemsize: 4,
        })
        .unwrap();

        assert_eq!(
            (whole_rows.count, whole_rows.run_bytes, whole_rows.offset_of(0)),
            (1, 96, 48)
        );
        assert_eq!((partial.count, partial.run_bytes), (2, 32));
        assert_eq!([partial.offset_of(0), partial.offset_of(1)], [64, 112]);
        assert_eq!((scalar.count, scalar.run_bytes, scalar.offset_of(0)), (1, 4, 0));
    }
}
