//! Gathering a strided array into C order, one bounce buffer at a time.
//!
//! A source that is not C-contiguous (a strided view, a Fortran-ordered or transposed array) is
//! described by its memory, the offset of its first element, its shape and its byte strides.
//! [`StridedBytes::gather`] fills a buffer with the next bytes of its C-order serialisation:
//! rows that are contiguous runs are copied run after run along one running offset; a
//! transposed pair of axes whose columns are contiguous (a Fortran-ordered array) is copied in
//! tiles, the columns' cache lines staged in a small buffer (wide arrays) or read in place (a
//! few columns) and transposed 4 x 4 or 2 x 2 items at a time in SSE registers; other transposed
//! pairs in cache-sized tiles; anything else element by element along the last axis. Only the
//! caller's buffer (and a stack buffer of a few KiB) is ever written, so transient memory is that
//! buffer and nothing more.

// Byte offsets are `isize` because strides may be negative. `StridedBytes::new` checks that
// every element lies inside the memory, so each offset computed below is in
// `0..memory.len()` and converts between `isize` and `usize` without wrapping.
#![allow(clippy::cast_possible_wrap, clippy::cast_sign_loss)]

use crate::error::{Error, Result};

/// Tile edge of a blocked transpose, in elements, for an item of `itemsize` bytes: a tile of
/// `edge × edge` items stays within about 16 KiB, well inside the L1 data cache.
fn tile_edge(itemsize: usize) -> usize {
    const TILE_BYTES: usize = 16 << 10;
    let items = (TILE_BYTES / itemsize.max(1)).max(1);
    // Integer square root, at least 8 items.
    let mut edge = 1usize;
    while (edge + 1) * (edge + 1) <= items {
        edge += 1;
    }
    edge.max(8)
}

/// The byte range `[low, high)` around the first element that a layout touches. `low <= 0`
/// and `high >= itemsize` unless the layout has no element (then `low == high == 0`).
///
/// # Errors
/// [`Error::SizeOverflow`] when the extent does not fit the address space.
pub fn extent(shape: &[usize], strides: &[isize], itemsize: usize) -> Result<(isize, isize)> {
    if shape.len() != strides.len() {
        return Err(invalid_layout("shape and strides differ in length"));
    }
    if shape.contains(&0) {
        return Ok((0, 0));
    }
    let mut low: isize = 0;
    let mut high = isize::try_from(itemsize).map_err(|_| Error::SizeOverflow)?;
    for (&len, &stride) in shape.iter().zip(strides) {
        let last = isize::try_from(len - 1).map_err(|_| Error::SizeOverflow)?;
        let reach = stride.checked_mul(last).ok_or(Error::SizeOverflow)?;
        if reach < 0 {
            low = low.checked_add(reach).ok_or(Error::SizeOverflow)?;
        } else {
            high = high.checked_add(reach).ok_or(Error::SizeOverflow)?;
        }
    }
    Ok((low, high))
}

fn invalid_layout(reason: &'static str) -> Error {
    Error::InvalidLayout { reason }
}

/// An array in memory, addressed by byte strides, read in C order.
#[derive(Debug, Clone)]
pub struct StridedBytes<'a> {
    memory: &'a [u8],
    /// Offset of the first element in `memory`.
    start: usize,
    itemsize: usize,
    /// The layout with length-1 axes dropped and C-adjacent axes merged; never empty.
    shape: Vec<usize>,
    strides: Vec<isize>,
    total: u64,
}

/// Where a gather stands: the output byte it continues from.
#[derive(Debug, Clone, Default)]
pub struct GatherCursor {
    /// Index of the current row (all axes but the last, in C order).
    row: usize,
    /// Byte offset inside the current row.
    within: usize,
}

impl<'a> StridedBytes<'a> {
    /// Describes the array whose first element is at `memory[start]`.
    ///
    /// # Errors
    /// [`Error::InvalidLayout`] when some element lies outside `memory`, or shape and strides
    /// differ in length; [`Error::SizeOverflow`] for sizes beyond the address space.
    pub fn new(memory: &'a [u8], start: usize, shape: &[usize], strides: &[isize], itemsize: usize) -> Result<Self> {
        let (low, high) = extent(shape, strides, itemsize)?;
        let start_at = isize::try_from(start).map_err(|_| Error::SizeOverflow)?;
        let mem_len = isize::try_from(memory.len()).map_err(|_| Error::SizeOverflow)?;
        let empty = shape.contains(&0) || itemsize == 0;
        if !empty
            && (start_at.checked_add(low).is_none_or(|at| at < 0)
                || start_at.checked_add(high).is_none_or(|at| at > mem_len))
        {
            return Err(invalid_layout("an element lies outside the buffer"));
        }
        let items = shape
            .iter()
            .try_fold(1usize, |acc, &len| acc.checked_mul(len))
            .ok_or(Error::SizeOverflow)?;
        let bytes = items.checked_mul(itemsize).ok_or(Error::SizeOverflow)?;
        let (shape, strides) = if empty {
            (
                vec![0],
                vec![isize::try_from(itemsize).map_err(|_| Error::SizeOverflow)?],
            )
        } else {
            normalise(shape, strides, itemsize)?
        };
        Ok(Self {
            memory,
            start,
            itemsize,
            shape,
            strides,
            total: bytes as u64,
        })
    }

    /// The number of bytes of the C-order serialisation.
    pub fn byte_len(&self) -> u64 {
        self.total
    }

    fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(0)
    }

    fn row_bytes(&self) -> usize {
        self.row_len() * self.itemsize
    }

    fn rows(&self) -> usize {
        self.shape.iter().rev().skip(1).product()
    }

    fn inner_stride(&self) -> isize {
        self.strides.last().copied().unwrap_or(0)
    }

    /// Whether the last axis is contiguous, so a row is one `memcpy`.
    fn rows_are_runs(&self) -> bool {
        usize::try_from(self.inner_stride()).is_ok_and(|stride| stride == self.itemsize)
    }

    /// Whether rows are closer together in memory than items of one row: a transposed pair of
    /// axes, which a tiled copy reads cache line by cache line.
    fn is_transposed(&self) -> bool {
        self.shape.len() >= 2
            && !self.rows_are_runs()
            && self.strides[self.shape.len() - 2].unsigned_abs() < self.inner_stride().unsigned_abs()
    }

    /// Byte offset of item 0 of `row` in `memory`.
    fn row_base(&self, row: usize) -> usize {
        let mut rest = row;
        let mut offset = self.start as isize;
        let outer = self.shape.len() - 1;
        for axis in (0..outer).rev() {
            let len = self.shape[axis];
            offset += self.strides[axis] * (rest % len) as isize;
            rest /= len;
        }
        // Every element lies inside `memory`, checked in `new`.
        offset as usize
    }

    /// Fills `out` with the next bytes of the C-order serialisation from `cursor`; returns how
    /// many were written (fewer than `out.len()` only at the end).
    pub fn gather(&self, cursor: &mut GatherCursor, out: &mut [u8]) -> usize {
        let rows = self.rows();
        let row_bytes = self.row_bytes();
        if row_bytes == 0 {
            return 0;
        }
        // Whole rows of one slab of the last two axes move as a block: runs along one running
        // offset, or a transposed pair of axes tile by tile.
        let runs = self.shape.len() >= 2 && self.rows_are_runs();
        let blocked = runs || self.is_transposed();
        let mut filled = 0;
        while filled < out.len() && cursor.row < rows {
            let room = out.len() - filled;
            if blocked && cursor.within == 0 && room >= 2 * row_bytes {
                let slab = self.shape[self.shape.len() - 2];
                let left_in_slab = slab - cursor.row % slab;
                let block = (room / row_bytes).min(left_in_slab).min(rows - cursor.row);
                if block >= 2 {
                    let len = block * row_bytes;
                    let rows_out = &mut out[filled..filled + len];
                    if runs {
                        self.copy_runs(cursor.row, block, rows_out);
                    } else {
                        self.copy_tiled(cursor.row, block, rows_out);
                    }
                    filled += len;
                    cursor.row += block;
                    continue;
                }
            }
            let len = room.min(row_bytes - cursor.within);
            self.copy_row_part(cursor.row, cursor.within, &mut out[filled..filled + len]);
            filled += len;
            cursor.within += len;
            if cursor.within == row_bytes {
                cursor.within = 0;
                cursor.row += 1;
            }
        }
        filled
    }

    /// Copies `block` whole rows from `first` on (all in one slab of the last two axes) when each
    /// row is one contiguous run: the rows are items of `row_bytes`, `stride` bytes apart.
    fn copy_runs(&self, first: usize, block: usize, out: &mut [u8]) {
        let row_bytes = self.row_bytes();
        let stride = self.strides[self.shape.len() - 2];
        copy_items(
            self.memory,
            self.row_base(first),
            stride,
            row_bytes,
            &mut out[..block * row_bytes],
        );
    }

    /// Copies bytes `[within, within + out.len())` of `row`.
    fn copy_row_part(&self, row: usize, within: usize, out: &mut [u8]) {
        let base = self.row_base(row);
        if self.rows_are_runs() {
            out.copy_from_slice(&self.memory[base + within..base + within + out.len()]);
            return;
        }
        let size = self.itemsize;
        let stride = self.inner_stride();
        let item_at = |index: usize| (base as isize + stride * index as isize) as usize;
        let mut done = 0;
        let mut index = within / size;
        let skip = within % size;
        if skip != 0 {
            let take = (size - skip).min(out.len());
            let at = item_at(index) + skip;
            out[..take].copy_from_slice(&self.memory[at..at + take]);
            done = take;
            index += 1;
        }
        let whole = (out.len() - done) / size;
        copy_items(
            self.memory,
            item_at(index),
            stride,
            size,
            &mut out[done..done + whole * size],
        );
        done += whole * size;
        index += whole;
        if done < out.len() {
            let at = item_at(index);
            let take = out.len() - done;
            out[done..].copy_from_slice(&self.memory[at..at + take]);
        }
    }

    /// Copies `block` whole rows from `first` on (all in one slab of the last two axes) with a
    /// blocked transpose. Short output rows are filled column by column (each tile column is
    /// read along the source's short stride and scattered into rows that stay in cache); long
    /// ones row by row (each output row segment is written contiguously).
    fn copy_tiled(&self, first: usize, block: usize, out: &mut [u8]) {
        let size = self.itemsize;
        let row_len = self.row_len();
        let row_bytes = row_len * size;
        let row_stride = self.strides[self.shape.len() - 2];
        let col_stride = self.inner_stride();
        let base = self.row_base(first) as isize;
        if row_stride == size as isize && col_stride > 0 {
            let handled = match size {
                1 => self.copy_staged::<1>(base, block, out),
                2 => self.copy_staged::<2>(base, block, out),
                4 => self.copy_staged::<4>(base, block, out),
                8 => self.copy_staged::<8>(base, block, out),
                16 => self.copy_staged::<16>(base, block, out),
                _ => 0,
            };
            if handled == block {
                return;
            }
        }
        let edge = tile_edge(size);
        let by_column = edge * row_bytes <= SHORT_TILE_BYTES;
        for row0 in (0..block).step_by(edge) {
            let rows = edge.min(block - row0);
            for col0 in (0..row_len).step_by(edge) {
                let cols = edge.min(row_len - col0);
                let corner = base + row_stride * row0 as isize + col_stride * col0 as isize;
                let to = row0 * row_bytes + col0 * size;
                if by_column {
                    for col in 0..cols {
                        let from = corner + col_stride * col as isize;
                        scatter_items(
                            self.memory,
                            from,
                            row_stride,
                            out,
                            to + col * size,
                            row_bytes,
                            rows,
                            size,
                        );
                    }
                } else {
                    for row in 0..rows {
                        let from = corner + row_stride * row as isize;
                        let at = to + row * row_bytes;
                        copy_items(
                            self.memory,
                            from as usize,
                            col_stride,
                            size,
                            &mut out[at..at + cols * size],
                        );
                    }
                }
            }
        }
    }
}

impl StridedBytes<'_> {
    /// The transpose of an array whose columns are contiguous runs of `S`-byte items (a
    /// Fortran-ordered array): `block` output rows from the row at `base`, tile by tile. A tile's
    /// column runs (whole cache lines of each column) are first copied into a small staging
    /// buffer, then the tile's output rows are assembled from it 4 x 4 items at a time and
    /// written in runs. Copying whole lines into a contiguous buffer sidesteps the cache-set
    /// conflicts of columns a power of two apart, which evict each other when a tile reads them
    /// in place; a narrow array gets tall tiles, so per-tile work stays small. Returns how many
    /// rows it wrote: all of them, or 0 when the rows are too few for one tile (the caller then
    /// copies them another way).
    fn copy_staged<const S: usize>(&self, base: isize, block: usize, out: &mut [u8]) -> usize {
        let line_items = (LINE_BYTES / S).max(1);
        let row_len = self.row_len();
        let row_bytes = row_len * S;
        let col_stride = self.inner_stride();
        if block < line_items {
            return 0;
        }
        if row_len <= DIRECT_COLUMNS {
            // So few column streams cannot conflict in the cache: transpose straight from them.
            let start = base as usize;
            let run = col_stride as usize;
            let columns = &self.memory[start..start + (row_len - 1) * run + block * S];
            let rows_out = &mut out[..(block - 1) * row_bytes + row_bytes];
            assemble::<S>(columns, run, block, row_len, rows_out, row_bytes);
            return block;
        }
        // Few columns per tile and many rows: each column is read in runs of several lines, which
        // the hardware prefetches, rather than one line from each of many far-apart columns.
        let tile_cols = row_len.min(TILE_COLUMNS);
        let tile_rows = (STAGE_BYTES / (tile_cols * S) / line_items * line_items).max(line_items);
        let mut stage = [0u8; STAGE_BYTES];
        // Band by band of columns, all the rows of the block within a band: the band's columns
        // (each in pages of its own when they are far apart) are visited once per call, in runs
        // of lines, instead of once per tile row, which would miss the TLB on every line.
        let mut band_start = 0;
        while band_start < row_len {
            let band_width = tile_cols.min(row_len - band_start);
            let mut tile_start = 0;
            while tile_start < block {
                let tile_height = tile_rows.min(block - tile_start);
                let run = tile_height * S;
                for col in 0..band_width {
                    let column = (base + col_stride * (band_start + col) as isize) as usize;
                    let from = column + tile_start * S;
                    stage[col * run..col * run + run].copy_from_slice(&self.memory[from..from + run]);
                }
                let first = tile_start * row_bytes + band_start * S;
                let tile = &mut out[first..first + (tile_height - 1) * row_bytes + band_width * S];
                assemble::<S>(
                    &stage[..band_width * run],
                    run,
                    tile_height,
                    band_width,
                    tile,
                    row_bytes,
                );
                tile_start += tile_height;
            }
            band_start += band_width;
        }
        block
    }
}

/// Writes the transpose of `stage` (`cols` column runs of `run` bytes, `rows` items each) into
/// `out`, whose rows are `row_bytes` apart: in blocks the CPU transposes in registers where there
/// is a kernel for the item size (4 and 8 bytes on x86-64), item by item elsewhere and at the
/// ragged edges.
#[inline]
fn assemble<const S: usize>(stage: &[u8], run: usize, rows: usize, cols: usize, out: &mut [u8], row_bytes: usize) {
    let (whole_rows, whole_cols) = transpose_blocks::<S>(stage, run, rows, cols, out, row_bytes);
    for row in 0..rows {
        let first_col = if row < whole_rows { whole_cols } else { 0 };
        for col in first_col..cols {
            let (from, to) = (col * run + row * S, row * row_bytes + col * S);
            out[to..to + S].copy_from_slice(&stage[from..from + S]);
        }
    }
}

/// Transposes the largest part of the tile made of whole register blocks; returns the rows and
/// columns it covered (from 0).
#[cfg(target_arch = "x86_64")]
#[inline]
#[allow(unsafe_code)]
// The unaligned SSE loads and stores take float pointers but accept any alignment.
#[allow(clippy::cast_ptr_alignment)]
fn transpose_blocks<const S: usize>(
    stage: &[u8],
    run: usize,
    rows: usize,
    cols: usize,
    out: &mut [u8],
    row_bytes: usize,
) -> (usize, usize) {
    use std::arch::x86_64::{
        __m128, __m128i, _mm_loadu_ps, _mm_loadu_si128, _mm_movehl_ps, _mm_movelh_ps, _mm_storeu_ps, _mm_storeu_si128,
        _mm_unpackhi_epi64, _mm_unpackhi_ps, _mm_unpacklo_epi64, _mm_unpacklo_ps,
    };
    // Every block below reads `rows_per` items of `cols_per` columns from `stage` and writes as
    // many items of as many rows into `out`; these bounds keep all of them inside both slices.
    let covered = |rows_per: usize, cols_per: usize| {
        let (whole_rows, whole_cols) = (rows / rows_per * rows_per, cols / cols_per * cols_per);
        let fits = whole_rows == 0
            || whole_cols == 0
            || (stage.len() >= (whole_cols - 1) * run + whole_rows * S
                && out.len() >= (whole_rows - 1) * row_bytes + whole_cols * S);
        if fits { (whole_rows, whole_cols) } else { (0, 0) }
    };
    match S {
        4 => {
            let (whole_rows, whole_cols) = covered(4, 4);
            for row in (0..whole_rows).step_by(4) {
                for col in (0..whole_cols).step_by(4) {
                    // SAFETY: `covered` checked that the four 16-byte loads (4 items of columns
                    // col..col + 4 from `row`) lie in `stage` and the four 16-byte stores (4
                    // items of rows row..row + 4 from `col`) in `out`; loads and stores are
                    // unaligned, SSE is part of x86-64.
                    unsafe {
                        let load = |column: usize| -> __m128 {
                            _mm_loadu_ps(stage.as_ptr().add(column * run + row * 4).cast::<f32>())
                        };
                        let (a, b, c, d) = (load(col), load(col + 1), load(col + 2), load(col + 3));
                        let (ab_lo, cd_lo) = (_mm_unpacklo_ps(a, b), _mm_unpacklo_ps(c, d));
                        let (ab_hi, cd_hi) = (_mm_unpackhi_ps(a, b), _mm_unpackhi_ps(c, d));
                        let transposed = [
                            _mm_movelh_ps(ab_lo, cd_lo),
                            _mm_movehl_ps(cd_lo, ab_lo),
                            _mm_movelh_ps(ab_hi, cd_hi),
                            _mm_movehl_ps(cd_hi, ab_hi),
                        ];
                        for (index, vector) in transposed.into_iter().enumerate() {
                            let at = (row + index) * row_bytes + col * 4;
                            _mm_storeu_ps(out.as_mut_ptr().add(at).cast::<f32>(), vector);
                        }
                    }
                }
            }
            (whole_rows, whole_cols)
        }
        8 => {
            let (whole_rows, whole_cols) = covered(2, 2);
            for row in (0..whole_rows).step_by(2) {
                for col in (0..whole_cols).step_by(2) {
                    // SAFETY: as above, for 2 items of 2 columns and 2 items of 2 rows.
                    unsafe {
                        let load = |column: usize| -> __m128i {
                            _mm_loadu_si128(stage.as_ptr().add(column * run + row * 8).cast::<__m128i>())
                        };
                        let (a, b) = (load(col), load(col + 1));
                        let at = row * row_bytes + col * 8;
                        _mm_storeu_si128(out.as_mut_ptr().add(at).cast::<__m128i>(), _mm_unpacklo_epi64(a, b));
                        let next = at + row_bytes;
                        _mm_storeu_si128(out.as_mut_ptr().add(next).cast::<__m128i>(), _mm_unpackhi_epi64(a, b));
                    }
                }
            }
            (whole_rows, whole_cols)
        }
        _ => (0, 0),
    }
}

/// Without a register kernel every item is moved on its own (see `assemble`).
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn transpose_blocks<const S: usize>(
    _stage: &[u8],
    _run: usize,
    _rows: usize,
    _cols: usize,
    _out: &mut [u8],
    _row_bytes: usize,
) -> (usize, usize) {
    (0, 0)
}

/// Up to this many columns, a transposed copy reads them in place, without staging.
const DIRECT_COLUMNS: usize = 8;

/// The most columns one tile of a transposed copy reads.
const TILE_COLUMNS: usize = 32;

/// A cache line: a transposed tile reads whole lines of each column.
const LINE_BYTES: usize = 64;

/// Bytes of the staging buffer of a transposed copy: well inside the L1 data cache, and room
/// for 64 rows of a full band of 8-byte columns, so each column is read in runs of 512 bytes
/// (a band of 16 such columns transposes a wide float64 array about 12% slower).
const STAGE_BYTES: usize = 16 << 10;

/// The most bytes a tile's output rows may span for the tile to be filled column by column.
const SHORT_TILE_BYTES: usize = 32 << 10;

/// The bytes `[low, high)` that `count` items of `size` bytes reach from `from`, `stride` apart,
/// as a checked sub-slice of `memory`, with the offset of the first item inside it.
fn item_span(memory: &[u8], from: isize, stride: isize, count: usize, size: usize) -> (&[u8], usize) {
    let last = from + stride * (count as isize - 1);
    let (low, high) = if stride < 0 { (last, from) } else { (from, last) };
    let span = &memory[low as usize..high as usize + size];
    (span, (from - low) as usize)
}

/// Copies `count` items of `size` bytes, the first at `memory[from]` and the next ones
/// `stride` bytes apart, to `out[to]` and every `out_stride` bytes after it.
#[allow(clippy::too_many_arguments)] // One tight loop; bundling the strides would only hide them.
fn scatter_items(
    memory: &[u8],
    from: isize,
    stride: isize,
    out: &mut [u8],
    to: usize,
    out_stride: usize,
    count: usize,
    size: usize,
) {
    if count == 0 {
        return;
    }
    let (span, first) = item_span(memory, from, stride, count, size);
    macro_rules! fixed {
        ($n:literal) => {{
            let mut at = first as isize;
            let mut put = to;
            for _ in 0..count {
                out[put..put + $n].copy_from_slice(&read_item::<$n>(span, at));
                at += stride;
                put += out_stride;
            }
        }};
    }
    match size {
        1 => fixed!(1),
        2 => fixed!(2),
        4 => fixed!(4),
        8 => fixed!(8),
        16 => fixed!(16),
        _ => {
            let mut at = first as isize;
            let mut put = to;
            for _ in 0..count {
                out[put..put + size].copy_from_slice(&span[at as usize..at as usize + size]);
                at += stride;
                put += out_stride;
            }
        }
    }
}

/// The `N` bytes at `span[at..at + N]`.
///
/// Callers pass only offsets of items that [`item_span`] put inside `span`: the first item's
/// offset plus a multiple of the stride, for no more items than the span was cut for.
#[inline]
#[allow(unsafe_code)]
fn read_item<const N: usize>(span: &[u8], at: isize) -> [u8; N] {
    debug_assert!(at >= 0 && at as usize + N <= span.len());
    // SAFETY: `item_span` cut `span` from the lowest to the end of the highest item of this
    // run (a checked slice of the array's memory), and `at` is the offset of one of those
    // items inside it, so `[at, at + N)` lies inside `span`. The read is unaligned-safe and
    // copies plain bytes.
    unsafe { span.as_ptr().offset(at).cast::<[u8; N]>().read_unaligned() }
}

/// Copies `out.len() / size` items of `size` bytes, the first at `memory[from]`, the next ones
/// `stride` bytes apart, packed into `out`.
fn copy_items(memory: &[u8], from: usize, stride: isize, size: usize, out: &mut [u8]) {
    let count = out.len() / size.max(1);
    if count == 0 {
        return;
    }
    let (span, first) = item_span(memory, from as isize, stride, count, size);
    macro_rules! fixed {
        ($n:literal) => {{
            let mut at = first as isize;
            for item in out.chunks_exact_mut($n) {
                item.copy_from_slice(&read_item::<$n>(span, at));
                at += stride;
            }
        }};
    }
    match size {
        1 => fixed!(1),
        2 => fixed!(2),
        4 => fixed!(4),
        8 => fixed!(8),
        12 => fixed!(12),
        16 => fixed!(16),
        20 => fixed!(20),
        24 => fixed!(24),
        32 => fixed!(32),
        48 => fixed!(48),
        64 => fixed!(64),
        _ => {
            let mut at = first as isize;
            for item in out.chunks_exact_mut(size) {
                item.copy_from_slice(&span[at as usize..at as usize + size]);
                at += stride;
            }
        }
    }
}

/// Drops length-1 axes and merges each axis into the next when together they step like one
/// C-ordered axis. Keeps at least one axis (a 0-d array becomes one item).
fn normalise(shape: &[usize], strides: &[isize], itemsize: usize) -> Result<(Vec<usize>, Vec<isize>)> {
    let mut out_shape: Vec<usize> = Vec::with_capacity(shape.len());
    let mut out_strides: Vec<isize> = Vec::with_capacity(shape.len());
    for (&len, &stride) in shape.iter().zip(strides) {
        if len == 1 {
            continue;
        }
        if let (Some(last_len), Some(last_stride)) = (out_shape.last_mut(), out_strides.last_mut()) {
            let step = isize::try_from(len).ok().and_then(|len| stride.checked_mul(len));
            if step == Some(*last_stride) {
                *last_len = last_len.checked_mul(len).ok_or(Error::SizeOverflow)?;
                *last_stride = stride;
                continue;
            }
        }
        out_shape.push(len);
        out_strides.push(stride);
    }
    if out_shape.is_empty() {
        out_shape.push(1);
        out_strides.push(isize::try_from(itemsize).map_err(|_| Error::SizeOverflow)?);
    }
    Ok((out_shape, out_strides))
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The C-order bytes of a layout, one item at a time by its full index.
    fn naive(memory: &[u8], start: usize, shape: &[usize], strides: &[isize], itemsize: usize) -> Vec<u8> {
        let count: usize = shape.iter().product();
        let mut out = Vec::new();
        for flat in 0..count {
            let mut rest = flat;
            let mut at = start as isize;
            for axis in (0..shape.len()).rev() {
                at += strides[axis] * (rest % shape[axis]) as isize;
                rest /= shape[axis];
            }
            out.extend_from_slice(&memory[at as usize..at as usize + itemsize]);
        }
        out
    }

    /// Gathers all of `source` through a buffer of `buffer_len` bytes.
    fn gathered(source: &StridedBytes<'_>, buffer_len: usize) -> Vec<u8> {
        let mut cursor = GatherCursor::default();
        let mut buffer = vec![0u8; buffer_len];
        let mut out = Vec::new();
        loop {
            let filled = source.gather(&mut cursor, &mut buffer);
            if filled == 0 {
                return out;
            }
            assert!(filled == buffer_len || out.len() + filled == source.byte_len() as usize);
            out.extend_from_slice(&buffer[..filled]);
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|index| (index * 7 + index / 251) as u8).collect()
    }

    /// A view of a C-ordered `base` array of `base_shape` items: each axis sliced with a step
    /// (negative steps start from the end), then the axes permuted.
    fn view(
        base_shape: &[usize],
        steps: &[isize],
        order: &[usize],
        itemsize: usize,
    ) -> (Vec<usize>, Vec<isize>, usize) {
        let mut strides = vec![itemsize as isize; base_shape.len()];
        for axis in (0..base_shape.len().saturating_sub(1)).rev() {
            strides[axis] = strides[axis + 1] * base_shape[axis + 1] as isize;
        }
        let mut start = 0isize;
        let mut shape = Vec::new();
        let mut view_strides = Vec::new();
        for axis in 0..base_shape.len() {
            let step = steps[axis];
            let len = base_shape[axis].div_ceil(step.unsigned_abs());
            if step < 0 {
                start += strides[axis] * (base_shape[axis] as isize - 1);
            }
            shape.push(len);
            view_strides.push(strides[axis] * step);
        }
        let shape: Vec<usize> = order.iter().map(|&axis| shape[axis]).collect();
        let strides: Vec<isize> = order.iter().map(|&axis| view_strides[axis]).collect();
        (shape, strides, start as usize)
    }

    fn layout_strategy() -> impl Strategy<Value = (Vec<usize>, Vec<isize>, Vec<usize>, usize, usize)> {
        (
            1usize..4,
            prop_oneof![Just(1usize), Just(2), Just(3), Just(4), Just(8), Just(16), Just(12)],
        )
            .prop_flat_map(|(ndim, itemsize)| {
                (
                    proptest::collection::vec(1usize..9, ndim),
                    proptest::collection::vec(prop_oneof![Just(1isize), Just(2), Just(3), Just(-1), Just(-2)], ndim),
                    Just((0..ndim).collect::<Vec<usize>>()).prop_shuffle(),
                    Just(itemsize),
                    1usize..200,
                )
            })
    }

    proptest! {
        #[test]
        fn gather_matches_item_by_item_c_order_for_any_view_and_buffer(
            (base_shape, steps, order, itemsize, buffer_len) in layout_strategy()
        ) {
            let memory = pattern(base_shape.iter().product::<usize>() * itemsize);
            let (shape, strides, start) = view(&base_shape, &steps, &order, itemsize);
            let source = StridedBytes::new(&memory, start, &shape, &strides, itemsize).unwrap();

            let expected = naive(&memory, start, &shape, &strides, itemsize);

            prop_assert_eq!(source.byte_len() as usize, expected.len());
            prop_assert_eq!(gathered(&source, buffer_len), expected.clone());
            prop_assert_eq!(gathered(&source, expected.len().max(1)), expected);
        }
    }

    #[test]
    fn fortran_ordered_matrix_is_transposed_in_tiles_byte_exact() {
        let (rows, cols, itemsize) = (300, 257, 8);
        let memory = pattern(rows * cols * itemsize);
        // Column-major: the row axis steps one item, the column axis a whole column.
        let shape = [rows, cols];
        let strides = [itemsize as isize, (rows * itemsize) as isize];
        let source = StridedBytes::new(&memory, 0, &shape, &strides, itemsize).unwrap();
        assert!(source.is_transposed());

        let expected = naive(&memory, 0, &shape, &strides, itemsize);

        for buffer_len in [8, 100, cols * itemsize * 2, cols * itemsize * 64 + 5, 1 << 20] {
            assert_eq!(gathered(&source, buffer_len), expected, "buffer {buffer_len}");
        }
    }

    /// The layout of a Fortran-ordered `(rows, cols)` array of `itemsize`-byte items.
    fn fortran(rows: usize, cols: usize, itemsize: usize) -> ([usize; 2], [isize; 2]) {
        ([rows, cols], [itemsize as isize, (rows * itemsize) as isize])
    }

    #[test]
    fn fortran_ordered_arrays_of_every_width_and_item_size_are_transposed_byte_exact() {
        let shapes = [(1000, 3), (70, 40), (33, 1030), (4099, 5), (17, 17), (64, 8), (9, 2)];
        for itemsize in [1, 2, 3, 4, 8, 12, 16] {
            for (rows, cols) in shapes {
                let memory = pattern(rows * cols * itemsize);
                let (shape, strides) = fortran(rows, cols, itemsize);
                let source = StridedBytes::new(&memory, 0, &shape, &strides, itemsize).unwrap();
                let expected = naive(&memory, 0, &shape, &strides, itemsize);
                let row_bytes = cols * itemsize;
                for buffer_len in [2 * row_bytes, 2 * row_bytes + 5, (64 << 10) + 7, expected.len()] {
                    assert_eq!(
                        gathered(&source, buffer_len),
                        expected,
                        "({rows}, {cols}) x {itemsize} bytes, buffer {buffer_len}"
                    );
                }
            }
        }
    }

    #[test]
    fn wide_fortran_arrays_are_transposed_byte_exact_across_band_and_tile_edges() {
        // Widths around one and several bands of staged columns, heights around one tile of
        // staged rows, for every item size with a staged kernel and a few without one.
        let widths = [TILE_COLUMNS - 1, TILE_COLUMNS, TILE_COLUMNS + 1, 3 * TILE_COLUMNS + 5];
        for itemsize in [1, 2, 4, 5, 8, 16, 24, 64] {
            let tile_rows = STAGE_BYTES / (TILE_COLUMNS * itemsize);
            let heights = [
                9,
                tile_rows.max(9) - 1,
                tile_rows.max(9),
                tile_rows + 1,
                2 * tile_rows + 3,
            ];
            for cols in widths {
                for rows in heights {
                    let memory = pattern(rows * cols * itemsize);
                    let (shape, strides) = fortran(rows, cols, itemsize);
                    let source = StridedBytes::new(&memory, 0, &shape, &strides, itemsize).unwrap();
                    let expected = naive(&memory, 0, &shape, &strides, itemsize);
                    let row_bytes = cols * itemsize;
                    for buffer_len in [2 * row_bytes, 9 * row_bytes + 3, expected.len()] {
                        assert_eq!(
                            gathered(&source, buffer_len),
                            expected,
                            "({rows}, {cols}) x {itemsize} bytes, buffer {buffer_len}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_transposed_view_inside_a_larger_array_reads_only_its_items() {
        // Columns 3..40 of rows 5..250 of a Fortran-ordered (300, 50) f32 array, and the same of
        // a column-reversed view: the copy must stay inside the view's items.
        let (rows, cols, itemsize) = (300usize, 50usize, 4usize);
        let memory = pattern(rows * cols * itemsize);
        let col_stride = (rows * itemsize) as isize;
        let start = 3 * rows * itemsize + 5 * itemsize;
        for (shape, strides, first) in [
            ([245usize, 37usize], [itemsize as isize, col_stride], start),
            (
                [245, 37],
                [itemsize as isize, -col_stride],
                start + 36 * rows * itemsize,
            ),
        ] {
            let source = StridedBytes::new(&memory, first, &shape, &strides, itemsize).unwrap();
            let expected = naive(&memory, first, &shape, &strides, itemsize);
            for buffer_len in [2 * 37 * itemsize, 4096, expected.len()] {
                assert_eq!(
                    gathered(&source, buffer_len),
                    expected,
                    "{strides:?}, buffer {buffer_len}"
                );
            }
        }
    }

    #[test]
    fn row_strided_views_copy_their_rows_as_runs_byte_exact() {
        for row_bytes in [4, 12, 16, 20, 64, 72] {
            let rows = 500;
            let memory = pattern(rows * 2 * row_bytes);
            let shape = [rows, row_bytes / 4];
            let strides = [2 * row_bytes as isize, 4];
            let source = StridedBytes::new(&memory, 0, &shape, &strides, 4).unwrap();
            let expected = naive(&memory, 0, &shape, &strides, 4);
            for buffer_len in [2 * row_bytes, 3 * row_bytes + 1, 4096, expected.len()] {
                assert_eq!(
                    gathered(&source, buffer_len),
                    expected,
                    "rows of {row_bytes}, buffer {buffer_len}"
                );
            }
        }
    }

    #[test]
    fn contiguous_runs_are_merged_into_whole_rows() {
        let memory = pattern(4 * 6 * 2);
        // Every other row of a (4, 6) u16 array: rows are runs, the row axis skips one row.
        let source = StridedBytes::new(&memory, 0, &[2, 6], &[24, 2], 2).unwrap();

        assert!(source.rows_are_runs());
        assert_eq!(gathered(&source, 5), naive(&memory, 0, &[2, 6], &[24, 2], 2));
    }

    #[test]
    fn zero_d_and_empty_layouts_gather_one_item_and_nothing() {
        let memory = pattern(16);
        let scalar = StridedBytes::new(&memory, 8, &[], &[], 8).unwrap();
        assert_eq!(gathered(&scalar, 3), memory[8..16].to_vec());

        let empty = StridedBytes::new(&memory, 0, &[3, 0], &[8, 8], 8).unwrap();
        assert_eq!(empty.byte_len(), 0);
        assert!(gathered(&empty, 4).is_empty());
    }

    #[test]
    fn a_layout_reaching_outside_the_memory_is_refused() {
        let memory = pattern(64);
        let cases: [(usize, &[usize], &[isize]); 4] = [
            (0, &[9], &[8]),
            (8, &[2], &[-16]),
            (0, &[2, 2], &[40, 32]),
            (0, &[2], &[isize::MAX]),
        ];
        for (start, shape, strides) in cases {
            let err = StridedBytes::new(&memory, start, shape, strides, 8).unwrap_err();
            assert!(
                matches!(err, Error::InvalidLayout { .. } | Error::SizeOverflow),
                "{shape:?} {strides:?}: {err}"
            );
        }
        assert!(StridedBytes::new(&memory, 0, &[2], &[8, 8], 8).is_err());
    }

    #[test]
    fn extent_spans_the_lowest_to_the_highest_byte_touched() {
        assert_eq!(extent(&[3, 4], &[32, 8], 8).unwrap(), (0, 96));
        assert_eq!(extent(&[3], &[-8], 8).unwrap(), (-16, 8));
        assert_eq!(extent(&[], &[], 4).unwrap(), (0, 4));
        assert_eq!(extent(&[0, 5], &[8, 8], 8).unwrap(), (0, 0));
    }

    #[test]
    fn tile_edge_keeps_a_tile_near_16_kib_and_at_least_eight_items() {
        assert_eq!(tile_edge(8), 45);
        assert_eq!(tile_edge(1), 128);
        assert_eq!(tile_edge(1 << 20), 8);
    }
}
