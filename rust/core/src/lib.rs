//! File I/O core of `lazy_disk_cache`: atomic commits, space reservation, mappings and `.npy`
//! headers. Pure Rust; it never sees Python.
//!
//! Every system call on an artefact goes through the [`fs::Fs`] seam (a mapping is memmap2's,
//! behind the seam's `map_gate`). Every artefact operation is relative to an open
//! [`CacheDir`] and takes a single path segment, named by the rules in [`names`].
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod atomic;
mod checked;
pub mod checksum;
pub mod commit;
pub mod copy;
pub mod dir;
pub mod error;
pub mod fs;
pub mod gather;
pub mod keylock;
pub mod mapping;
pub mod names;
pub mod npy;
pub mod region;
pub mod reserve;
pub mod sequential;
pub mod sweep;
pub mod sync_pool;
mod verify;
pub mod working;
pub mod write;

pub use atomic::{ClosedTemp, PendingFile, RenameFailure, RenameGroup};
pub use checksum::Digest;
pub use commit::{ArraySpec, CommitBatch, KeyWriter, StagedKey, WrittenPayload};
pub use copy::ChunkBudget;
pub use dir::CacheDir;
pub use error::{Error, Op, Result};
pub use gather::StridedBytes;
pub use keylock::{HolderLock, HolderProbe, KeyLock};
pub use mapping::{Mapping, MappingMode};
pub use names::validate_name;
pub use npy::{NPY_DATA_ALIGN, NpyHeader};
pub use region::{BlockPlacement, BlockSource, Region, RegionTarget};
pub use sweep::SweepReport;
pub use working::{WorkingFileFate, WorkingFilesReport};
pub use write::{FileRange, PayloadWriter};
