//! Store commits: `<key>.npy` + `<key>.meta.json` pairs written to temps, then renamed
//! together with one directory fsync.
//!
//! For each key the `.npy` temp is reserved (header + payload), gets its header and payload
//! and is fsynced, then the sidecar temp is written and fsynced. [`commit_staged`] renames
//! `.npy` then `.meta.json` for every key in order and fsyncs the directory once. Store
//! commits are always durable.

use crate::atomic::{CommitGroup, PendingFile, StreamWriter, temp_name};
use crate::copy::{Between, ChunkBudget};
use crate::dir::{CacheDir, validate_name};
use crate::error::{Error, Result, add, to_u64};
use crate::npy;

/// Suffix of a stored payload.
pub const NPY_SUFFIX: &str = ".npy";
/// Suffix of a stored sidecar.
pub const META_SUFFIX: &str = ".meta.json";

/// What the header of a staged `.npy` says.
#[derive(Debug, Clone, Copy)]
pub struct ArraySpec<'a> {
    /// The dtype description as a Python literal.
    pub descr: &'a str,
    /// Whether the payload is in Fortran order.
    pub fortran_order: bool,
    /// The shape.
    pub shape: &'a [u64],
}

/// A key whose `.npy` temp is being written.
#[derive(Debug)]
pub struct NpyWriter {
    key: String,
    payload: StreamWriter,
}

/// A key whose two temps are written and fsynced, waiting for [`commit_staged`].
#[derive(Debug)]
pub struct StagedKey {
    key: String,
    npy: PendingFile,
    meta: PendingFile,
}

impl StagedKey {
    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

fn checked_names(key: &str) -> Result<(String, String)> {
    let npy = format!("{key}{NPY_SUFFIX}");
    let meta = format!("{key}{META_SUFFIX}");
    validate_name(key)?;
    validate_name(&temp_name(&meta))?;
    Ok((npy, meta))
}

impl NpyWriter {
    /// Creates `<key>.npy.tmp`, reserves header + `nbytes` and writes the header.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::InvalidHeader`] for a descr we cannot encode, and the
    /// errors of [`PendingFile::create`] / [`PendingFile::reserve`] / writing.
    pub fn create(dir: &CacheDir, key: &str, spec: ArraySpec<'_>, nbytes: u64, budget: ChunkBudget) -> Result<Self> {
        let (npy_name, _) = checked_names(key)?;
        let header = npy::encode_header(spec.descr, spec.fortran_order, spec.shape, nbytes).map_err(|reason| {
            Error::InvalidHeader {
                path: dir.path_of(&npy_name),
                reason,
            }
        })?;
        let header_len = to_u64(header.len());
        let file = PendingFile::create(dir, &npy_name)?;
        file.reserve(add(header_len, nbytes)?)?;
        file.write_at(&header, 0, ChunkBudget::new(header_len), &mut || Ok(()))?;
        Ok(Self {
            key: key.to_owned(),
            payload: StreamWriter::new(file, header_len, nbytes, budget),
        })
    }

    /// Appends a payload block.
    ///
    /// # Errors
    /// As [`StreamWriter::write_block`].
    pub fn write_block(&mut self, block: &[u8], between: Between<'_>) -> Result<()> {
        self.payload.write_block(block, between)
    }

    /// Fills the payload from `src_name` at `src_offset` (reflink or `copy_file_range`).
    ///
    /// # Errors
    /// As [`StreamWriter::copy_from`].
    pub fn copy_from(&mut self, src_name: &str, src_offset: u64, between: Between<'_>) -> Result<()> {
        validate_name(src_name)?;
        self.payload.copy_from(src_name, src_offset, between)
    }

    /// Checks the payload size, fsyncs the `.npy` temp, writes and fsyncs the sidecar temp.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`] for a short payload; I/O errors of either temp. On error both
    /// temps of this key are removed.
    pub fn finish(self, meta: &[u8]) -> Result<StagedKey> {
        let mut npy = self.payload.finish()?;
        npy.sync()?;
        let (_, meta_name) = checked_names(&self.key)?;
        let mut meta_file = PendingFile::create(npy.dir(), &meta_name)?;
        let meta_len = to_u64(meta.len());
        meta_file.reserve(meta_len)?;
        meta_file.write_at(meta, 0, ChunkBudget::new(meta_len), &mut || Ok(()))?;
        meta_file.sync()?;
        Ok(StagedKey {
            key: self.key,
            npy,
            meta: meta_file,
        })
    }
}

/// Renames every staged pair (`.npy` first, then `.meta.json`, key by key) and fsyncs the
/// directory once.
///
/// # Errors
/// As [`CommitGroup::commit`]: keys renamed before a failure stay committed, the remaining
/// temps are removed.
pub fn commit_staged(dir: &CacheDir, staged: Vec<StagedKey>) -> Result<()> {
    let mut group = CommitGroup::new(dir);
    for key in staged {
        group.push(key.npy);
        group.push(key.meta);
    }
    group.commit()
}
