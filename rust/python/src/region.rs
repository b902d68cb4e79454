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

/// A guard Python may give up before its object is collected: taken out at most once.
struct Slot<T>(Mutex<Option<T>>);

impl<T> Slot<T> {
    fn new(value: T) -> Self {
        Self(Mutex::new(Some(value)))
    }

    /// The guard, unless it was taken already.
    fn take(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn is_full(&self) -> bool {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }
}

/// A key's writer lock, held until released (see `_rust.pyi`).
#[pyclass(name = "KeyLock", module = "lazy_disk_cache._rust", frozen)]
pub struct PyKeyLock {
    inner: Slot<KeyLock>,
}

impl PyKeyLock {
    pub fn new(lock: KeyLock) -> Self {
        Self { inner: Slot::new(lock) }
    }
}

#[pymethods]
impl PyKeyLock {
    fn release(&self) {
        drop(self.inner.take());
    }

    #[getter]
    fn held(&self) -> bool {
        self.inner.is_full()
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
    inner: Slot<HolderLock>,
}

impl PyKeyHolder {
    pub fn new(lock: HolderLock) -> Self {
        Self { inner: Slot::new(lock) }
    }
}

#[pymethods]
impl PyKeyHolder {
    fn release(&self) {
        drop(self.inner.take());
    }

    #[getter]
    fn held(&self) -> bool {
        self.inner.is_full()
    }
}

/// A reserved `<key>.npy.tmp` (see `_rust.pyi`).
#[pyclass(name = "Region", module = "lazy_disk_cache._rust", frozen)]
pub struct PyRegion {
    inner: Slot<Region>,
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
            inner: Slot::new(region),
        }
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
        self.inner.is_full()
    }

    fn commit(&self, py: Python<'_>, meta: &[u8]) -> PyResult<()> {
        let region = self
            .inner
            .take()
            .ok_or_else(|| PyValueError::new_err("the region was already committed or aborted"))?;
        to_py(run_detached(py, || region.commit(meta)))
    }

    fn abort(&self, py: Python<'_>) {
        let region = self.inner.take();
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
