//! The one conversion from core errors to Python exceptions.
//!
//! `Io` and `Rename` become `OSError(errno, strerror(errno), filename[, None, filename2])` with
//! the note `during <op>` (PEP 678), so `strerror` stays the system's text and tracebacks name the
//! operation; calling the `OSError` type that way makes `CPython` pick the subclass from the
//! errno (`FileNotFoundError`, `PermissionError`, ...). Bad names, bad headers, bad buffer
//! layouts, size mismatches and keys staged twice are `ValueError` (with the core's message), overflow is `OverflowError`, and an interrupted copy re-raises
//! the exception that stopped it (normally `KeyboardInterrupt`).

use std::io;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use lazy_disk_cache_core as ldc_core;
use ldc_core::Error as CoreError;
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyOverflowError, PyValueError};
use pyo3::prelude::*;

/// EIO, used when an I/O error carries no errno (it always does for system calls).
const FALLBACK_ERRNO: i32 = 5;

/// A core error on its way to Python (a newtype because of the orphan rule).
#[derive(Debug)]
pub struct PyCoreError(pub CoreError);

impl From<CoreError> for PyCoreError {
    fn from(err: CoreError) -> Self {
        Self(err)
    }
}

impl From<PyCoreError> for PyErr {
    fn from(PyCoreError(err): PyCoreError) -> PyErr {
        match err {
            CoreError::Io { op, path, source } => os_error(&source, &op.to_string(), &path, None),
            CoreError::Rename { from, to, source } => os_error(&source, "rename", &from, Some(&to)),
            CoreError::InvalidName { .. }
            | CoreError::InvalidHeader { .. }
            | CoreError::InvalidLayout { .. }
            | CoreError::SizeMismatch { .. }
            | CoreError::AlreadyStaged { .. } => PyValueError::new_err(err.to_string()),
            CoreError::SizeOverflow => PyOverflowError::new_err(err.to_string()),
            CoreError::Interrupted => PyKeyboardInterrupt::new_err(()),
        }
    }
}

/// The text of `err` without Rust's " (os error N)" suffix, i.e. `strerror(errno)`.
fn strerror(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

fn os_error(source: &io::Error, op: &str, path: &Path, path2: Option<&Path>) -> PyErr {
    let errno = source.raw_os_error().unwrap_or(FALLBACK_ERRNO);
    let filename = path.to_string_lossy().into_owned();
    Python::attach(|py| {
        let os_error_type = py.get_type::<PyOSError>();
        let built = match path2 {
            Some(path2) => {
                let filename2 = path2.to_string_lossy().into_owned();
                os_error_type.call1((errno, strerror(source), filename, py.None(), filename2))
            }
            None => os_error_type.call1((errno, strerror(source), filename)),
        };
        // Callers compare `strerror` with `os.strerror(errno)`: the operation goes into a note.
        let noted = built.and_then(|instance| {
            instance.call_method1("add_note", (format!("during {op}"),))?;
            Ok(instance)
        });
        match noted {
            Ok(instance) => PyErr::from_value(instance),
            Err(err) => err,
        }
    })
}

/// Converts a core result.
pub fn to_py<T>(result: ldc_core::Result<T>) -> PyResult<T> {
    result.map_err(|err| PyErr::from(PyCoreError(err)))
}

/// The Python exception that stopped a copy between chunks, kept until the core has cleaned
/// up and returned [`CoreError::Interrupted`].
#[derive(Debug, Default)]
pub struct PendingPyErr(Mutex<Option<PyErr>>);

impl PendingPyErr {
    /// Stores `err` and returns the core error that makes the copy stop.
    pub fn stop(&self, err: PyErr) -> CoreError {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(err);
        CoreError::Interrupted
    }

    /// Converts a core result, re-raising the stored exception for an interruption.
    pub fn to_py<T>(&self, result: ldc_core::Result<T>) -> PyResult<T> {
        result.map_err(|err| match err {
            CoreError::Interrupted => self
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
                .unwrap_or_else(|| PyErr::from(PyCoreError(CoreError::Interrupted))),
            other => PyErr::from(PyCoreError(other)),
        })
    }
}

/// Converts an `OSError`-carrying core error to the exception object (for returned lists).
pub fn to_exception(py: Python<'_>, err: CoreError) -> Py<PyAny> {
    PyErr::from(PyCoreError(err)).into_value(py).into_any()
}
