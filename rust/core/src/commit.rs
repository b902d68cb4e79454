//! Store commits: `<key>.npy` + `<key>.meta.json` pairs written to temps, then renamed
//! together with one directory fsync.
//!
//! For each key the `.npy` temp is reserved (header + payload), gets its header and payload
//! and is fsynced, then the sidecar temp is written and fsynced. [`CommitBatch::commit`]
//! renames `.npy` then `.meta.json` for every key in order and fsyncs the directory once.
//! Store commits are always durable.
//!
//! A batch holds O(1) descriptors however many keys it stages: each temp is closed once it is
//! fsynced, and the batch's closed temps are kept from the sweep by one shared
//! [`WriterLock`] on the directory, taken before the first temp is created and released
//! with the last staged temp (committed or removed).

use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::atomic::{ClosedTemp, CommitGroup, PendingFile, StreamWriter, temp_name};
use crate::copy::{Between, ChunkBudget};
use crate::dir::{CacheDir, WriterLock, validate_name};
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

/// A key whose `.npy` temp is being written (open, with its own lock).
#[derive(Debug)]
pub struct NpyWriter {
    key: String,
    payload: StreamWriter,
    guard: Arc<WriterLock>,
}

/// A key whose two temps are written, fsynced and closed, waiting for
/// [`CommitBatch::commit`]. Dropping it unlinks both temps.
#[derive(Debug)]
pub struct StagedKey {
    key: String,
    npy: ClosedTemp,
    meta: ClosedTemp,
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
    /// Creates `<key>.npy.tmp`, reserves header + `nbytes` and writes the header. `guard` is
    /// the directory's writer lock, which will protect the temps once they are closed.
    fn create(
        dir: &CacheDir,
        key: &str,
        spec: ArraySpec<'_>,
        nbytes: u64,
        budget: ChunkBudget,
        guard: Arc<WriterLock>,
    ) -> Result<Self> {
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
            guard,
        })
    }

    /// The key being written.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Appends a payload block.
    ///
    /// # Errors
    /// As [`StreamWriter::write_block`].
    pub fn write_block(&mut self, block: &[u8], between: Between<'_>) -> Result<()> {
        self.payload.write_block(block, between)
    }

    /// Fills the payload from `src_name` at `src_offset`: reflink where the filesystem can,
    /// else `copy_file_range`, else a bounded bounce buffer.
    ///
    /// # Errors
    /// [`Error::InvalidName`]; as [`StreamWriter::copy_from`].
    pub fn copy_from(&mut self, src_name: &str, src_offset: u64, between: Between<'_>) -> Result<()> {
        validate_name(src_name)?;
        self.payload.copy_from(src_name, src_offset, between)
    }

    /// Checks the payload size, fsyncs and closes the `.npy` temp, then writes, fsyncs and
    /// closes the sidecar temp.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`] for a short payload; I/O errors of either temp. On error both
    /// temps of this key are removed.
    fn finish(self, meta: &[u8]) -> Result<StagedKey> {
        let dir = self.payload.file().dir().clone();
        let npy = self.payload.finish()?.close_synced(Arc::clone(&self.guard))?;
        let (_, meta_name) = checked_names(&self.key)?;
        let meta_file = PendingFile::create(&dir, &meta_name)?;
        // No reservation for the sidecar: it is a few hundred bytes written with pwrite, which
        // reports ENOSPC itself, and it is never mapped, so there is no SIGBUS to prevent.
        let meta_len = to_u64(meta.len());
        meta_file.write_at(meta, 0, ChunkBudget::new(meta_len), &mut || Ok(()))?;
        let meta = meta_file.close_synced(self.guard)?;
        Ok(StagedKey {
            key: self.key,
            npy,
            meta,
        })
    }
}

/// A group commit in one directory: keys are staged one by one, then renamed together.
///
/// All methods take `&self`; the staged list is behind a mutex taken only to push or take, so
/// no file I/O and no callback ever runs while it is held. Dropping the batch removes every
/// staged temp.
#[derive(Debug)]
pub struct CommitBatch {
    dir: CacheDir,
    budget: ChunkBudget,
    // Weak: the lock lives exactly as long as a writer or a staged temp needs it.
    guard: Mutex<Weak<WriterLock>>,
    staged: Mutex<Vec<StagedKey>>,
}

impl CommitBatch {
    /// An empty batch in `dir` whose payloads are written in pieces of at most `budget` bytes.
    /// Takes no descriptor until the first key.
    pub fn new(dir: &CacheDir, budget: ChunkBudget) -> Self {
        Self {
            dir: dir.clone(),
            budget,
            guard: Mutex::new(Weak::new()),
            staged: Mutex::new(Vec::new()),
        }
    }

    /// The directory's writer lock: the batch's current one, or a newly taken one.
    fn writer_lock(&self) -> Result<Arc<WriterLock>> {
        // The mutex is held across the flock wait so concurrent first keys share one lock.
        let mut slot = self.guard.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(guard) = slot.upgrade() {
            return Ok(guard);
        }
        let guard = Arc::new(self.dir.writer_lock()?);
        *slot = Arc::downgrade(&guard);
        Ok(guard)
    }

    /// Starts staging `key`: takes the directory's writer lock if the batch holds none, then
    /// creates `<key>.npy.tmp`, reserves header + `nbytes` and writes the header. Feed the
    /// payload to the returned writer, then hand it to [`CommitBatch::stage`].
    ///
    /// # Errors
    /// [`Error::InvalidName`] for an illegal key or one already staged in this batch,
    /// [`Error::InvalidHeader`] for a descr we cannot encode, [`Error::Io`] with [`Op::Open`]
    /// or [`Op::Lock`] for the directory lock, and the errors of [`PendingFile::create`] /
    /// [`PendingFile::reserve`] / writing. Nothing is left behind on error.
    ///
    /// [`Op::Open`]: crate::Op::Open
    /// [`Op::Lock`]: crate::Op::Lock
    pub fn begin_key(&self, key: &str, spec: ArraySpec<'_>, nbytes: u64) -> Result<NpyWriter> {
        if self.contains(key) {
            return Err(Error::InvalidName {
                name: key.to_owned(),
                reason: "is already staged in this batch",
            });
        }
        let guard = self.writer_lock()?;
        NpyWriter::create(&self.dir, key, spec, nbytes, self.budget, guard)
    }

    /// Finishes `writer` (payload size check, fsync and close of the `.npy` temp, sidecar temp
    /// written from `meta`, fsynced and closed) and stages the key.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`] for a short payload; I/O errors of either temp. On error both
    /// temps of this key are removed; keys staged earlier stay staged.
    pub fn stage(&self, writer: NpyWriter, meta: &[u8]) -> Result<()> {
        let staged = writer.finish(meta)?;
        self.staged.lock().unwrap_or_else(PoisonError::into_inner).push(staged);
        Ok(())
    }

    /// Whether `key` is staged.
    pub fn contains(&self, key: &str) -> bool {
        self.staged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|staged| staged.key() == key)
    }

    /// The staged keys, in staging order.
    pub fn keys(&self) -> Vec<String> {
        self.staged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|staged| staged.key().to_owned())
            .collect()
    }

    fn take_staged(&self) -> Vec<StagedKey> {
        std::mem::take(&mut *self.staged.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Renames every staged pair (`.npy` first, then `.meta.json`, key by key) and fsyncs the
    /// directory once (not at all when nothing is staged). The batch is empty afterwards and
    /// may stage again.
    ///
    /// # Errors
    /// As [`CommitGroup::commit`]: keys renamed before a failure stay committed, the remaining
    /// temps are removed.
    pub fn commit(&self) -> Result<()> {
        let mut group = CommitGroup::new(&self.dir);
        for key in self.take_staged() {
            group.push(key.npy);
            group.push(key.meta);
        }
        group.commit()
    }

    /// Unlinks every staged temp. Idempotent.
    pub fn abort(&self) {
        drop(self.take_staged());
    }
}
