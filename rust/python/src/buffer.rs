//! Intake of Python buffers as bytes: C-contiguous only (else `ValueError`), writable where
//! we fill them.
#![allow(unsafe_code)]

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// A C-contiguous buffer export held for the duration of a call.
#[derive(Debug)]
pub struct Bytes {
    buf: PyUntypedBuffer,
}

impl Bytes {
    /// Exports `obj` as a C-contiguous buffer.
    pub fn get(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let buf = PyUntypedBuffer::get(obj)?;
        if !buf.is_c_contiguous() {
            return Err(PyValueError::new_err("buffer must be C-contiguous"));
        }
        Ok(Self { buf })
    }

    /// Exports `obj` as a writable C-contiguous buffer.
    pub fn get_writable(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let bytes = Self::get(obj)?;
        if bytes.buf.readonly() {
            return Err(PyValueError::new_err("destination buffer is read-only"));
        }
        Ok(bytes)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.buf.len_bytes()
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        let len = self.len();
        if len == 0 {
            return &[];
        }
        // SAFETY: the export is held by `self`, so the exporter keeps the memory alive and in
        // place (NumPy refuses to resize an exported array) for the lifetime of the borrow;
        // it is C-contiguous (checked in `get`) and `len_bytes` long. The bytes are only read
        // by the kernel (pwrite). A concurrent mutation by other Python threads can tear the
        // written content, the documented contract of `ndarray.tofile` that we share.
        unsafe { std::slice::from_raw_parts(self.buf.buf_ptr().cast::<u8>(), len) }
    }

    /// The bytes, writable (only for buffers from [`Bytes::get_writable`]).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len();
        if len == 0 || self.buf.readonly() {
            return &mut [];
        }
        // SAFETY: as in `as_slice`, and the export is writable (checked in `get_writable`);
        // `&mut self` makes this the only slice we form over it.
        unsafe { std::slice::from_raw_parts_mut(self.buf.buf_ptr().cast::<u8>(), len) }
    }
}
