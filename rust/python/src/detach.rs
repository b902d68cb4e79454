//! The only place the GIL is released. Every blocking call goes through [`run_detached`];
//! no Rust lock is ever held across it.

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

/// A between-chunks callback for detached copies: re-attaches and runs the signal handlers,
/// so Ctrl-C stops a long copy (its temp is then removed and the exception re-raised).
pub fn signal_check(pending: &PendingPyErr) -> impl FnMut() -> ldc_core::Result<()> + '_ {
    // A closure, not the method path: `attach` needs a callback generic over the lifetime.
    #[allow(clippy::redundant_closure_for_method_calls)]
    move || Python::attach(|py| py.check_signals()).map_err(|err| pending.stop(err))
}
