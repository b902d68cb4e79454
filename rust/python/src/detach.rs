//! The only place the GIL is released. Every blocking call goes through [`run_detached`];
//! no Rust lock is ever held across it.

use std::sync::atomic::{AtomicU64, Ordering};

use lazy_disk_cache_core as ldc_core;
use pyo3::prelude::*;

use crate::errors::PendingPyErr;

/// Runs `f` with the GIL released.
pub fn run_detached<T, F>(py: Python<'_>, f: F) -> T
where
    F: Send + FnOnce() -> T,
    T: Send,
{
    py.detach(f)
}

/// What a detached copy does between chunks: re-attach, run the signal handlers (so Ctrl-C stops
/// a long copy) and report the bytes moved to an optional Python `progress(moved)` callable.
/// Whatever either raises stops the copy (its temp is then removed) and is re-raised.
pub struct ChunkHook<'a> {
    pending: &'a PendingPyErr,
    progress: Option<Py<PyAny>>,
    reported: AtomicU64,
}

impl<'a> ChunkHook<'a> {
    /// A hook that stores what stops a copy in `pending` and reports to `progress`, if any.
    pub fn new(pending: &'a PendingPyErr, progress: Option<Py<PyAny>>) -> Self {
        Self {
            pending,
            progress,
            reported: AtomicU64::new(0),
        }
    }

    /// The between-chunks callback handed to the core.
    pub fn between(&self) -> impl FnMut(u64) -> ldc_core::Result<()> + '_ {
        move |moved| {
            Python::attach(|py| {
                py.check_signals()?;
                self.report(py, moved)
            })
            .map_err(|err| self.pending.stop(err))
        }
    }

    /// Reports the bytes of `done` (moved so far, in total) not reported yet; the GIL is held.
    pub fn catch_up(&self, py: Python<'_>, done: u64) -> PyResult<()> {
        let reported = self.reported.load(Ordering::Relaxed);
        self.report(py, done.saturating_sub(reported))
    }

    fn report(&self, py: Python<'_>, moved: u64) -> PyResult<()> {
        self.reported.fetch_add(moved, Ordering::Relaxed);
        match &self.progress {
            Some(progress) if moved > 0 => progress.call1(py, (moved,)).map(drop),
            _ => Ok(()),
        }
    }
}
