//! The `lazy_disk_cache._rust` extension module: thin wrappers over `lazy-disk-cache-core`.
#![deny(unsafe_op_in_unsafe_fn)]

use pyo3::prelude::*;

#[pymodule]
mod _rust {
    #[pymodule_export]
    const __version__: &str = env!("CARGO_PKG_VERSION");
}
