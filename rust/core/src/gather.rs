//! Gathering a strided array into C order, one bounce buffer at a time.
//!
//! A source that is not C-contiguous (a strided view, a Fortran-ordered or transposed array) is
//! described by its memory, the offset of its first element, its shape and its byte strides.
//! [`StridedBytes::gather`] fills a buffer with the next bytes of its C-order serialisation:
//! whole contiguous runs are copied with `memcpy`, a transposed pair of axes is copied in
//! cache-sized tiles, and anything else element by element along the last axis. Only the
//! caller's buffer is ever written, so transient memory is that buffer and nothing more.

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
        let mut filled = 0;
        while filled < out.len() && cursor.row < rows {
            let room = out.len() - filled;
            if cursor.within == 0 && self.is_transposed() && room >= 2 * row_bytes {
                let slab = self.shape[self.shape.len() - 2];
                let left_in_slab = slab - cursor.row % slab;
                let block = (room / row_bytes).min(left_in_slab).min(rows - cursor.row);
                if block >= 2 {
                    let len = block * row_bytes;
                    self.copy_tiled(cursor.row, block, &mut out[filled..filled + len]);
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
        16 => fixed!(16),
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
