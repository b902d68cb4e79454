//! `KeyLock`, `KeyHolder` and `Region`: a key's cross-process writer lock, a process's
//! announcement that it holds an entry on a key's `.dat`, and a reserved `.npy` temp that block
//! writers fill and its owner commits (see `_rust.pyi`).

use std::sync::{Mutex, PoisonError};

use lazy_disk_cache_core as ldc_core;
use ldc_core::{HolderLock, KeyLock, Region};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::detach::run_detached;
use crate::errors::to_py;

/// A key's writer lock, held until released (see `_rust.pyi`).
#[pyclass(name = "KeyLock", module = "lazy_disk_cache._rust", frozen)]
pub struct PyKeyLock {
    inner: Mutex<Option<KeyLock>>,
}

impl PyKeyLock {
    pub fn new(lock: KeyLock) -> Self {
        Self {
            inner: Mutex::new(Some(lock)),
        }
    }
}

#[pymethods]
impl PyKeyLock {
    fn release(&self) {
        drop(self.inner.lock().unwrap_or_else(PoisonError::into_inner).take());
    }

    #[getter]
    fn held(&self) -> bool {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        exc_type: Option<&Bound<'_, PyAny>>,
        exc: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) {
        let _ = (exc_type, exc, tb);
        self.release();
    }
}

/// This process's hold on a key's `.dat`, until released or collected (see `_rust.pyi`).
#[pyclass(name = "KeyHolder", module = "lazy_disk_cache._rust", frozen)]
pub struct PyKeyHolder {
    inner: Mutex<Option<HolderLock>>,
}

impl PyKeyHolder {
    pub fn new(lock: HolderLock) -> Self {
        Self {
            inner: Mutex::new(Some(lock)),
        }
    }
}

#[pymethods]
impl PyKeyHolder {
    fn release(&self) {
        drop(self.inner.lock().unwrap_or_else(PoisonError::into_inner).take());
    }

    #[getter]
    fn held(&self) -> bool {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }
}

/// A reserved `<key>.npy.tmp` (see `_rust.pyi`).
#[pyclass(name = "Region", module = "lazy_disk_cache._rust", frozen)]
pub struct PyRegion {
    inner: Mutex<Option<Region>>,
    temp_name: String,
    data_offset: u64,
    nbytes: u64,
    nonce: u64,
}

impl PyRegion {
    pub fn new(region: Region) -> Self {
        Self {
            temp_name: region.temp_name(),
            data_offset: region.data_offset(),
            nbytes: region.nbytes(),
            nonce: region.nonce(),
            inner: Mutex::new(Some(region)),
        }
    }

    fn take(&self) -> Option<Region> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

#[pymethods]
impl PyRegion {
    #[getter]
    fn temp_name(&self) -> &str {
        &self.temp_name
    }

    #[getter]
    fn data_offset(&self) -> u64 {
        self.data_offset
    }

    #[getter]
    fn nbytes(&self) -> u64 {
        self.nbytes
    }

    #[getter]
    fn nonce(&self) -> u64 {
        self.nonce
    }

    #[getter]
    fn open(&self) -> bool {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    fn commit(&self, py: Python<'_>, meta: &[u8]) -> PyResult<()> {
        let region = self
            .take()
            .ok_or_else(|| PyValueError::new_err("the region was already committed or aborted"))?;
        to_py(run_detached(py, || region.commit(meta)))
    }

    fn abort(&self, py: Python<'_>) {
        let region = self.take();
        run_detached(py, || drop(region));
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        exc: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) {
        // Leaving the block without commit() aborts; after commit() nothing is left.
        let _ = (exc_type, exc, tb);
        self.abort(py);
    }
}
