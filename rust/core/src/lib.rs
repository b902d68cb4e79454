//! File I/O core of `lazy_disk_cache`: atomic commits, space reservation, mappings and `.npy`
//! headers. Pure Rust; it never sees Python.
#![deny(unsafe_code)]
