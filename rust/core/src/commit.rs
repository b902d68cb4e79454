//! Store commits: `<key>.npy` + `<key>.meta.json` pairs written to temps, then renamed
//! together with one directory fsync.
//!
//! For each key the `.npy` temp is reserved (header + payload) and gets its header and payload,
//! which the writer hashes as it writes them; the finished temp goes to the batch's
//! [`SyncPool`], whose threads fsync and close it while the rest goes on
//! ([`KeyWriter::finish_payload`]). The sidecar temp, written second so that it can record the
//! checksum, follows it there ([`CommitBatch::stage`]). [`CommitBatch::commit`] waits for every
//! fsync, then renames `.npy` then `.meta.json` for every key in order, up to the first key
//! whose fsync failed, and fsyncs the directory once: nothing is renamed before both temps of
//! its key are fsynced. Store commits are always durable.
//!
//! A batch holds a bounded number of descriptors however many keys it stages: a temp is closed
//! once it is fsynced, and the queue to the fsync threads is bounded. Each key's temps are kept
//! from sweeps and other writers by the key's writer lock ([`KeyLock`]), taken before its first
//! temp is created and released with its last temp (committed or removed).
//!
//! A batch never waits for a lock while it holds others: when a key's lock is held elsewhere,
//! the batch first commits the keys it has staged (each key stays old or new, as always), then
//! waits. Writers holding several locks therefore never wait on each other in a cycle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use crate::atomic::{PendingFile, RenameFailure, RenameGroup};
use crate::checked::{add, to_u64};
use crate::checksum::{Digest, Hasher};
use crate::copy::ChunkBudget;
use crate::dir::CacheDir;
use crate::error::{Error, Op, Result};
use crate::keylock::{KeyLock, writer_byte};
use crate::names::PairNames;
use crate::npy;
use crate::sync_pool::{SyncPool, Ticket, lock};
use crate::write::PayloadWriter;

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

/// A key whose `.npy` temp is being written (open, with its own lock): its header is in
/// place, the payload goes through [`KeyWriter::payload`].
#[derive(Debug)]
pub struct KeyWriter {
    key: String,
    names: PairNames,
    payload: PayloadWriter,
    guard: Arc<KeyLock>,
    // The batch's fsync threads, which take the temps once written.
    pool: Arc<Mutex<SyncPool>>,
}

/// A key whose `.npy` temp is written and handed to the fsync pool, with the checksum of the
/// whole `.npy`, waiting for its sidecar ([`CommitBatch::stage`]). Dropping it unlinks the temp
/// (once its fsync has run).
#[derive(Debug)]
pub struct WrittenPayload {
    key: String,
    names: PairNames,
    dir: CacheDir,
    npy: Arc<Ticket>,
    identity: (u64, u64),
    digest: Option<Digest>,
    guard: Arc<KeyLock>,
    pool: Arc<Mutex<SyncPool>>,
}

impl WrittenPayload {
    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The checksum of the `.npy` temp, header included; `None` when checksums are switched off
    /// ([`crate::checksum::set_enabled`]).
    pub fn digest(&self) -> Option<Digest> {
        self.digest
    }

    /// Which file the `.npy` temp is (device and inode numbers): the file `<key>.npy` names once
    /// the batch has renamed it, until another writer renames another file over that name.
    pub fn identity(&self) -> (u64, u64) {
        self.identity
    }
}

/// A key whose two temps are written and handed to the fsync pool, waiting for
/// [`CommitBatch::commit`]. Once the pool has settled them, dropping it unlinks both temps.
#[derive(Debug)]
pub struct StagedKey {
    key: String,
    npy: Arc<Ticket>,
    meta: Arc<Ticket>,
}

impl StagedKey {
    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl KeyWriter {
    /// Creates `<key>.npy.tmp`, reserves header + `nbytes` and writes the header. `guard` is
    /// the key's writer lock, which will protect the temps once they are closed; `pool` the
    /// batch's fsync threads.
    fn create(
        dir: &CacheDir,
        key: &str,
        spec: ArraySpec<'_>,
        nbytes: u64,
        (budget, pool): (ChunkBudget, &Arc<Mutex<SyncPool>>),
        guard: Arc<KeyLock>,
    ) -> Result<Self> {
        let names = PairNames::of(key)?;
        let header = npy::encode_header(spec.descr, spec.fortran_order, spec.shape, nbytes).map_err(|reason| {
            Error::InvalidHeader {
                path: dir.path_of(&names.npy),
                reason,
            }
        })?;
        let header_len = to_u64(header.len());
        let file = PendingFile::create(dir, &names.npy)?;
        file.reserve(add(header_len, nbytes)?)?;
        file.write_all_at(&header, 0)?;
        let hasher = Hasher::if_enabled().map(|mut hasher| {
            hasher.update(&header);
            hasher
        });
        Ok(Self {
            key: key.to_owned(),
            names,
            payload: PayloadWriter::new(file, header_len, nbytes, budget, true).hashing(hasher),
            guard,
            pool: Arc::clone(pool),
        })
    }

    /// The key being written.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Where the payload starts in the `.npy` (right after the header).
    pub fn payload_offset(&self) -> u64 {
        self.payload.base()
    }

    /// The writer of the payload, which starts right after the header.
    pub fn payload(&mut self) -> &mut PayloadWriter {
        &mut self.payload
    }

    /// Checks the payload size and hands the `.npy` temp to the batch's fsync threads; the
    /// result carries the checksum of the whole file.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`] for a short payload; the errors of a background hash. On error the
    /// temp is (or, once its fsync has run, will be) removed.
    pub fn finish_payload(self) -> Result<WrittenPayload> {
        let dir = self.payload.file().dir().clone();
        let (file, digest) = self.payload.finish_parts()?;
        let identity = file.identity();
        let npy = lock(&self.pool).submit(file, Arc::clone(&self.guard));
        // A hash still reading a copied payload's source finishes while the temp is fsynced.
        // On error, dropping the ticket removes the temp.
        let digest = digest.wait()?;
        Ok(WrittenPayload {
            key: self.key,
            names: self.names,
            dir,
            npy,
            identity,
            digest,
            guard: self.guard,
            pool: self.pool,
        })
    }
}

impl WrittenPayload {
    /// Writes the sidecar temp from `meta` and hands it to the fsync threads too.
    ///
    /// # Errors
    /// I/O errors of the sidecar temp. On error both temps of this key are (or, once their
    /// fsync has run, will be) removed.
    fn finish(self, meta: &[u8]) -> Result<StagedKey> {
        let dir = self.dir;
        let meta_file = PendingFile::create(&dir, &self.names.meta)?;
        // No reservation for the sidecar: it is a few hundred bytes written with pwrite, which
        // reports ENOSPC itself, and it is never mapped, so there is no SIGBUS to prevent.
        meta_file.write_all_at(meta, 0)?;
        let meta = lock(&self.pool).submit(meta_file, self.guard);
        Ok(StagedKey {
            key: self.key,
            npy: self.npy,
            meta,
        })
    }
}

/// A group commit in one directory: keys are staged one by one, then renamed together.
///
/// All methods take `&self`; the staged list is behind a mutex taken only to push or take, so
/// no file I/O and no callback ever runs while it is held (the pool's mutex is held while a
/// temp is handed over, which may wait for room in its queue). Dropping the batch removes every
/// staged temp.
#[derive(Debug)]
pub struct CommitBatch {
    dir: CacheDir,
    budget: ChunkBudget,
    // By lock byte. Weak: a lock lives exactly as long as a writer or a staged temp needs it;
    // keys of the batch whose bytes collide share one.
    locks: Mutex<HashMap<u64, Weak<KeyLock>>>,
    pool: Arc<Mutex<SyncPool>>,
    staged: Mutex<Vec<StagedKey>>,
    committed: Mutex<Vec<String>>,
}

impl CommitBatch {
    /// An empty batch in `dir` whose payloads are written in pieces of at most `budget` bytes.
    /// Takes no descriptor until the first key.
    pub fn new(dir: &CacheDir, budget: ChunkBudget) -> Self {
        Self {
            dir: dir.clone(),
            budget,
            locks: Mutex::new(HashMap::new()),
            pool: Arc::new(Mutex::new(SyncPool::default())),
            staged: Mutex::new(Vec::new()),
            committed: Mutex::new(Vec::new()),
        }
    }

    /// The writer lock of `key`: the one the batch already holds for its byte, or a new one.
    /// When another writer holds it, the batch commits what it has staged before waiting.
    fn key_lock(&self, key: &str) -> Result<Arc<KeyLock>> {
        let byte = writer_byte(key);
        let held = lock(&self.locks).get(&byte).and_then(Weak::upgrade);
        if let Some(guard) = held {
            return Ok(guard);
        }
        let guard = if let Some(guard) = self.dir.try_lock_key(key)? {
            guard
        } else {
            self.commit()?;
            self.dir.lock_key(key)?
        };
        let guard = Arc::new(guard);
        let mut locks = lock(&self.locks);
        locks.retain(|_, lock| lock.strong_count() > 0);
        locks.insert(byte, Arc::downgrade(&guard));
        Ok(guard)
    }

    /// Starts staging `key`: becomes its writer (see [`CommitBatch`] for what happens when
    /// another writer is), then creates `<key>.npy.tmp` (a temp of the key found there is a
    /// crash's leftover and is replaced), reserves header + `nbytes` and writes the header.
    /// Feed the payload to the returned writer, finish it with [`KeyWriter::finish_payload`],
    /// then hand the result and the sidecar to [`CommitBatch::stage`].
    ///
    /// # Errors
    /// [`Error::InvalidName`] for an illegal key, [`Error::AlreadyStaged`] for one already
    /// staged in this batch, [`Error::InvalidHeader`] for a descr we cannot encode, [`Error::Io`] with [`Op::Open`]
    /// or [`Op::Lock`] for the key lock, the errors of [`CommitBatch::commit`] when staged keys
    /// had to be committed first, and the errors of [`PendingFile::create`] /
    /// [`PendingFile::reserve`] / writing. Nothing is left behind on error.
    ///
    /// [`Op::Open`]: crate::Op::Open
    /// [`Op::Lock`]: crate::Op::Lock
    pub fn begin_key(&self, key: &str, spec: ArraySpec<'_>, nbytes: u64) -> Result<KeyWriter> {
        self.refuse_staged(key)?;
        let guard = self.key_lock(key)?;
        KeyWriter::create(&self.dir, key, spec, nbytes, (self.budget, &self.pool), guard)
    }

    /// Writes the sidecar temp of `payload` from `meta`, hands it to the batch's fsync threads
    /// and stages the key. The fsyncs of both temps are waited for by [`CommitBatch::commit`],
    /// which reports a failed one.
    ///
    /// # Errors
    /// I/O errors of the sidecar temp. On error both temps of this key are removed; keys
    /// staged earlier stay staged.
    pub fn stage(&self, payload: WrittenPayload, meta: &[u8]) -> Result<()> {
        let staged = payload.finish(meta)?;
        lock(&self.staged).push(staged);
        Ok(())
    }

    /// The one check that a key is not staged twice in a batch.
    ///
    /// # Errors
    /// [`Error::AlreadyStaged`].
    pub fn refuse_staged(&self, key: &str) -> Result<()> {
        if self.contains(key) {
            return Err(Error::AlreadyStaged { key: key.to_owned() });
        }
        Ok(())
    }

    /// Whether `key` is staged.
    pub fn contains(&self, key: &str) -> bool {
        lock(&self.staged).iter().any(|staged| staged.key() == key)
    }

    /// The staged keys, in staging order.
    pub fn keys(&self) -> Vec<String> {
        lock(&self.staged)
            .iter()
            .map(|staged| staged.key().to_owned())
            .collect()
    }

    fn take_staged(&self) -> Vec<StagedKey> {
        std::mem::take(&mut *lock(&self.staged))
    }

    /// Waits for the fsync of every staged temp, then renames each pair (`.npy` first, then
    /// `.meta.json`, key by key) up to the first key whose fsync failed and fsyncs the
    /// directory once (not at all when nothing is renamed). The batch is empty afterwards and
    /// may stage again.
    ///
    /// # Errors
    /// The error of the first key that could not be committed: its failed fsync (that key and
    /// every later one keep their previous files, their temps are removed; the keys before it
    /// are committed), or as [`RenameGroup::commit`]: keys renamed before a failed rename stay
    /// committed, the remaining temps are removed. [`CommitBatch::committed`] names the keys
    /// made durable; a failed directory fsync adds none.
    pub fn commit(&self) -> Result<()> {
        let staged = self.take_staged();
        lock(&self.pool).drain();
        let mut committed = Vec::with_capacity(staged.len());
        let mut group = RenameGroup::new(&self.dir);
        let mut failed = None;
        for key in staged {
            // Both outcomes are taken even after a failure, so every temp is dropped (unlinked).
            let (npy, meta) = (key.npy.take(), key.meta.take());
            if failed.is_some() {
                continue;
            }
            match (npy, meta) {
                (Ok(npy), Ok(meta)) => {
                    group.push(npy);
                    group.push(meta);
                    committed.push(key.key);
                }
                (Err(err), _) | (_, Err(err)) => failed = Some(err),
            }
        }
        let outcome = match group.commit() {
            Ok(()) => failed.map_or(Ok(()), Err),
            Err(RenameFailure { renamed, error }) => {
                // Keys are renamed two files at a time, `.npy` first: a key whose sidecar rename
                // failed has its new payload in place with the old sidecar, which reads as the new
                // value (the header is the truth), but it is not reported as committed.
                committed.truncate(renamed / 2);
                if matches!(error, Error::Io { op: Op::DirFsync, .. }) {
                    committed.clear();
                }
                Err(error)
            }
        };
        lock(&self.committed).extend(committed);
        outcome
    }

    /// The keys this batch's commits have renamed into place and made durable so far, in order
    /// (also after a commit failed part-way, and including the commits a contended key lock
    /// made [`CommitBatch::begin_key`] run).
    pub fn committed(&self) -> Vec<String> {
        lock(&self.committed).clone()
    }

    /// Unlinks every staged temp (after their fsyncs have run). Idempotent.
    pub fn abort(&self) {
        let staged = self.take_staged();
        lock(&self.pool).drain();
        drop(staged);
    }
}
