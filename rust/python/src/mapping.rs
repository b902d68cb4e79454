//! `FileMapping`: a core mapping exported through the buffer protocol.
//!
//! The mapping is unmapped only when the object is dropped, i.e. when the last Python
//! reference goes; `NumPy` arrays built on it keep it alive through `.base`. The export count
//! is informational (`NumPy`'s `ndarray(buffer=...)` releases its export at once).
#![allow(unsafe_code)]

use std::ffi::c_int;
use std::sync::atomic::{AtomicUsize, Ordering};

use lazy_disk_cache_core as ldc_core;
use ldc_core::{Mapping, MappingMode};
use pyo3::exceptions::{PyBufferError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;

use crate::cache_dir::PyCacheDir;
use crate::detach::run_detached;
use crate::errors::to_py;

/// A memory mapping of one artefact file (see `_rust.pyi`).
#[pyclass(name = "FileMapping", module = "lazy_disk_cache._rust", frozen)]
pub struct PyFileMapping {
    inner: Mapping,
    exports: AtomicUsize,
}

impl PyFileMapping {
    /// Wraps a core mapping.
    pub fn new(inner: Mapping) -> Self {
        Self {
            inner,
            exports: AtomicUsize::new(0),
        }
    }

    /// The core mapping.
    pub fn mapping(&self) -> &Mapping {
        &self.inner
    }
}

#[pymethods]
impl PyFileMapping {
    #[staticmethod]
    #[pyo3(signature = (dir, name, *, mode = "r", offset = 0, length = None))]
    fn open(
        py: Python<'_>,
        dir: &Bound<'_, PyCacheDir>,
        name: &str,
        mode: &str,
        offset: u64,
        length: Option<u64>,
    ) -> PyResult<Self> {
        let mode = MappingMode::parse(mode)
            .ok_or_else(|| PyValueError::new_err(format!("mode must be 'r', 'r+' or 'c', not {mode:?}")))?;
        let dir = dir.get().inner.clone();
        let mapping = to_py(run_detached(py, || Mapping::open(&dir, name, mode, offset, length)))?;
        Ok(Self::new(mapping))
    }

    #[getter]
    fn mode(&self) -> &'static str {
        self.inner.mode().as_str()
    }

    #[getter]
    fn offset(&self) -> u64 {
        self.inner.offset()
    }

    #[getter]
    fn length(&self) -> usize {
        self.inner.len()
    }

    #[getter]
    fn readonly(&self) -> bool {
        self.inner.mode().is_readonly()
    }

    #[getter]
    fn exports(&self) -> usize {
        self.exports.load(Ordering::SeqCst)
    }

    #[getter]
    fn identity(&self) -> (u64, u64) {
        self.inner.identity()
    }

    #[getter]
    fn path(&self) -> String {
        self.inner.path().to_string_lossy().into_owned()
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        to_py(run_detached(py, || self.inner.flush()))
    }

    fn has_private_pages(&self, py: Python<'_>) -> bool {
        run_detached(py, || self.inner.has_private_pages())
    }

    #[allow(clippy::unused_self)] // Python calls it as a method.
    fn __reduce__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err("cannot pickle 'FileMapping' object"))
    }

    fn __repr__(&self) -> String {
        format!(
            "<FileMapping '{}' mode={:?} offset={} length={}>",
            self.inner.path().display(),
            self.inner.mode().as_str(),
            self.inner.offset(),
            self.inner.len()
        )
    }

    // PyO3 declares both buffer slots `unsafe fn`: CPython calls them with a `view` it owns.
    #[allow(clippy::needless_pass_by_value)] // The slot signature PyO3 requires.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let this = slf.get();
        let readonly = this.inner.mode().is_readonly();
        if readonly && flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("FileMapping opened with mode 'r' is read-only"));
        }
        let len =
            isize::try_from(this.inner.len()).map_err(|_| PyBufferError::new_err("mapping is too large to export"))?;
        // SAFETY: `view` is the Py_buffer CPython passes to bf_getbuffer. The window pointer is
        // valid for `len` bytes until this object is dropped, and PyBuffer_FillInfo stores a
        // new reference to `slf` in `view->obj`, so the object (and the mapping) outlives the
        // export. The memory is writable exactly when `readonly` is false (modes r+ and c).
        let status = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                this.inner.as_ptr().cast(),
                len,
                c_int::from(readonly),
                flags,
            )
        };
        if status != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        this.exports.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        self.exports.fetch_sub(1, Ordering::SeqCst);
    }
}
