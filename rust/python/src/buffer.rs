//! Intake of Python buffers as bytes: any layout for sources (a strided one is gathered by the
//! core), C-contiguous and writable for destinations we fill.
#![allow(unsafe_code)]

use lazy_disk_cache_core as ldc_core;
use ldc_core::gather::extent;
use ldc_core::{BlockSource, StridedBytes};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::to_py;

/// A buffer export held for the duration of a call.
#[derive(Debug)]
pub struct Bytes {
    buf: PyUntypedBuffer,
}

impl Bytes {
    /// Exports `obj` in whatever layout it has (no indirect, PIL-style buffers).
    pub fn get(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let buf = PyUntypedBuffer::get(obj)?;
        if buf.suboffsets().is_some() {
            return Err(PyValueError::new_err("buffers with suboffsets are not supported"));
        }
        Ok(Self { buf })
    }

    /// Exports `obj` as a writable C-contiguous buffer.
    pub fn get_writable(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let bytes = Self::get(obj)?;
        if !bytes.buf.is_c_contiguous() {
            return Err(PyValueError::new_err("destination buffer must be C-contiguous"));
        }
        if bytes.buf.readonly() {
            return Err(PyValueError::new_err("destination buffer is read-only"));
        }
        Ok(bytes)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.buf.len_bytes()
    }

    /// The bytes of a source in the layout they have.
    pub fn layout(&self) -> PyResult<BlockSource<'_>> {
        if self.buf.is_c_contiguous() {
            return Ok(BlockSource::Contiguous(self.contiguous()));
        }
        let (shape, strides, itemsize) = (self.buf.shape(), self.buf.strides(), self.buf.item_size());
        let (low, high) = to_py(extent(shape, strides, itemsize))?;
        let span = high.abs_diff(low);
        let memory: &[u8] = if span == 0 {
            &[]
        } else {
            // SAFETY: the export is held by `self`, so the exporter keeps the memory alive and
            // in place for the lifetime of the borrow (NumPy refuses to resize an exported
            // array). `extent` is the byte range around the first item that the shape and
            // strides reach, every item of an array lies in its one allocation, so the span
            // `[buf + low, buf + high)` is allocated memory of the exporter. The bytes are only
            // read. A concurrent mutation by other Python threads can tear the written
            // content, the documented contract of `ndarray.tofile` that we share.
            unsafe { std::slice::from_raw_parts(self.buf.buf_ptr().cast::<u8>().offset(low), span) }
        };
        let start = low.unsigned_abs();
        Ok(BlockSource::Strided(to_py(StridedBytes::new(
            memory, start, shape, strides, itemsize,
        ))?))
    }

    /// The bytes of a C-contiguous export.
    fn contiguous(&self) -> &[u8] {
        let len = self.len();
        if len == 0 {
            return &[];
        }
        // SAFETY: the export is held by `self`, so the exporter keeps the memory alive and in
        // place (NumPy refuses to resize an exported array) for the lifetime of the borrow;
        // it is C-contiguous (checked by the caller) and `len_bytes` long. The bytes are only
        // read by the kernel (pwrite). A concurrent mutation by other Python threads can tear
        // the written content, the documented contract of `ndarray.tofile` that we share.
        unsafe { std::slice::from_raw_parts(self.buf.buf_ptr().cast::<u8>(), len) }
    }

    /// The bytes, writable (only for buffers from [`Bytes::get_writable`]).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len();
        if len == 0 || self.buf.readonly() || !self.buf.is_c_contiguous() {
            return &mut [];
        }
        // SAFETY: as in `contiguous`, and the export is writable (checked in `get_writable`);
        // `&mut self` makes this the only slice we form over it.
        unsafe { std::slice::from_raw_parts_mut(self.buf.buf_ptr().cast::<u8>(), len) }
    }
}
