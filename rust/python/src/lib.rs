//! The `lazy_disk_cache._rust` extension module: thin wrappers over `lazy-disk-cache-core`.
//!
//! Methods convert arguments, release the GIL around blocking calls (`detach.rs`) and convert
//! errors in one place (`errors.rs`); all file logic lives in the core.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

mod buffer;
mod cache_dir;
mod detach;
mod errors;
mod mapping;
mod region;

use pyo3::prelude::*;

#[pymodule]
mod _rust {
    use lazy_disk_cache_core as ldc_core;
    use pyo3::exceptions::PyValueError;
    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::cache_dir::{PyCacheDir, PyCommitBatch, PyNpyHeader};
    #[pymodule_export]
    use crate::mapping::PyFileMapping;
    #[pymodule_export]
    use crate::region::{PyKeyHolder, PyKeyLock, PyRegion};

    #[pymodule_export]
    #[allow(non_upper_case_globals)]
    const __version__: &str = env!("CARGO_PKG_VERSION");

    // The artefact suffixes, defined once in the core; Python's path rules read them here.
    #[pymodule_export]
    const NPY_SUFFIX: &str = ldc_core::names::NPY_SUFFIX;
    #[pymodule_export]
    const META_SUFFIX: &str = ldc_core::names::META_SUFFIX;
    #[pymodule_export]
    const MEMMAP_SUFFIX: &str = ldc_core::names::MEMMAP_SUFFIX;
    #[pymodule_export]
    const TMP_SUFFIX: &str = ldc_core::names::TMP_SUFFIX;
    #[pymodule_export]
    const LEGACY_PICKLE_SUFFIX: &str = ldc_core::names::LEGACY_PICKLE_SUFFIX;
    /// The key lock file every writer of a directory shares; never a key, never swept.
    #[pymodule_export]
    const LOCK_FILE_NAME: &str = ldc_core::keylock::LOCK_FILE_NAME;

    /// The name of the checksum algorithm new store writes record (`<name>:<hex digest>`).
    #[pymodule_export]
    const CHECKSUM_ALGORITHM: &str = ldc_core::checksum::ALGORITHM;

    /// Benchmark seam: whether store writes compute and record checksums (on by default).
    #[pyfunction]
    fn _set_checksums(enabled: bool) {
        ldc_core::checksum::set_enabled(enabled);
    }

    /// The seam operations tests may fail.
    const INJECTABLE: [&str; 10] = [
        "create",
        "reserve",
        "write",
        "read",
        "copy",
        "fsync",
        "dir_fsync",
        "rename",
        "unlink",
        "map",
    ];

    /// Testing seam: make the `nth` (1-based) future call of `op` fail with `errno`.
    #[pyfunction]
    fn _inject_fault(op: &str, nth: u64, errno: i32) -> PyResult<()> {
        let known = ldc_core::Op::from_name(op).filter(|_| INJECTABLE.contains(&op));
        let Some(op) = known else {
            return Err(PyValueError::new_err(format!(
                "unknown operation {op:?}; expected one of {INJECTABLE:?}"
            )));
        };
        if nth == 0 {
            return Err(PyValueError::new_err("nth is 1-based"));
        }
        ldc_core::fs::inject_fault(op, nth, errno);
        Ok(())
    }

    /// Testing seam: drop every pending fault and reset the operation counters.
    #[pyfunction]
    fn _clear_faults() {
        ldc_core::fs::clear_faults();
    }

    /// Testing seam: how many times each filesystem operation ran since the last reset.
    #[pyfunction]
    fn _op_counts() -> std::collections::HashMap<&'static str, u64> {
        ldc_core::fs::op_counts()
            .into_iter()
            .map(|(op, count)| (op.name(), count))
            .collect()
    }
}
