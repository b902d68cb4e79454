//! The fsyncs of a group commit, run on a small pool of threads.
//!
//! A durable commit of many files waits on fsync latency, not on bandwidth, and file systems
//! serve concurrent fsyncs together (ext4 and xfs fold them into shared journal commits). So a
//! batch hands each written temp to a pool of at most [`MAX_THREADS`] threads and goes on writing
//! the next key; [`SyncPool::drain`] waits for every fsync before anything is renamed.
//!
//! The queue is bounded: while [`QUEUE_DEPTH`] temps wait for a thread, handing over one more
//! blocks, so at most `QUEUE_DEPTH + MAX_THREADS` temps are open at any time, however many keys a
//! batch holds. Each temp is fsynced exactly once, then closed ([`PendingFile::close_synced`]);
//! one whose fsync failed is unlinked at once and can never be renamed. A thread that cannot be
//! started is no error: the caller then fsyncs the temp itself.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use rustix::io::Errno;

use crate::atomic::{ClosedTemp, PendingFile};
use crate::error::{Error, Op, Result};
use crate::keylock::KeyLock;

/// The most threads a pool runs: as many fsyncs in flight as a careful hand-written commit has.
pub const MAX_THREADS: usize = 8;

/// How many temps may wait for a thread before handing over another one blocks.
pub const QUEUE_DEPTH: usize = 8;

/// Locks `mutex`; a poisoned one is taken over, as nothing panics while holding these.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where the outcome of one temp's fsync will be: the closed temp, or the fsync's error.
#[derive(Debug)]
pub(crate) struct Ticket {
    temp_path: PathBuf,
    outcome: Mutex<Option<Result<ClosedTemp>>>,
}

impl Ticket {
    fn new(temp_path: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            temp_path,
            outcome: Mutex::new(None),
        })
    }

    fn settle(&self, outcome: Result<ClosedTemp>) {
        *lock(&self.outcome) = Some(outcome);
    }

    /// Takes the outcome; call it after [`SyncPool::drain`], which settles every ticket. A ticket
    /// without an outcome (taken twice) counts as a failed fsync, so its temp is never renamed.
    pub(crate) fn take(&self) -> Result<ClosedTemp> {
        lock(&self.outcome)
            .take()
            .unwrap_or_else(|| Err(Error::io(Op::Fsync, &self.temp_path, std::io::Error::from(Errno::IO))))
    }
}

/// One temp to fsync, the writer lock its closed form keeps, and where the outcome goes.
struct Job {
    file: PendingFile,
    guard: Arc<KeyLock>,
    ticket: Arc<Ticket>,
}

impl Job {
    fn run(self) {
        let outcome = self.file.close_synced(self.guard);
        self.ticket.settle(outcome);
    }
}

/// A lazily started pool of fsync threads fed through a bounded queue.
#[derive(Debug, Default)]
pub(crate) struct SyncPool {
    queue: Option<SyncSender<Job>>,
    receiver: Option<Arc<Mutex<Receiver<Job>>>>,
    workers: Vec<JoinHandle<()>>,
    /// Threads waiting for a job right now.
    idle: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("temp", &self.ticket.temp_path)
            .finish_non_exhaustive()
    }
}

impl SyncPool {
    /// Hands `file` over to be fsynced and closed; returns where its outcome will be. Blocks
    /// while the queue is full. Starts a thread when none is idle and fewer than
    /// [`MAX_THREADS`] run; without any thread, fsyncs `file` right here.
    pub(crate) fn submit(&mut self, file: PendingFile, guard: Arc<KeyLock>) -> Arc<Ticket> {
        let ticket = Ticket::new(file.temp_path());
        let job = Job {
            file,
            guard,
            ticket: Arc::clone(&ticket),
        };
        if self.idle.load(Ordering::Acquire) == 0 && self.workers.len() < MAX_THREADS {
            self.start_worker();
        }
        let Some(queue) = &self.queue else {
            job.run();
            return ticket;
        };
        // Blocks while the queue is full; should the receiving end be gone, the job runs here.
        if let Err(returned) = queue.send(job) {
            returned.0.run();
        }
        ticket
    }

    /// Starts one more worker (and the queue, for the first); a refused spawn leaves the pool
    /// as it was.
    fn start_worker(&mut self) {
        if self.queue.is_none() {
            let (sender, receiver) = sync_channel(QUEUE_DEPTH);
            self.queue = Some(sender);
            self.receiver = Some(Arc::new(Mutex::new(receiver)));
        }
        let Some(receiver) = self.receiver.clone() else {
            return;
        };
        let idle = Arc::clone(&self.idle);
        let spawned = thread::Builder::new()
            .name("ldc-fsync".to_owned())
            .spawn(move || work(&receiver, &idle));
        if let Ok(handle) = spawned {
            self.workers.push(handle);
        } else if self.workers.is_empty() {
            // No thread at all: drop the queue, so jobs run in the caller.
            self.queue = None;
            self.receiver = None;
        }
    }

    /// Waits until every job handed over so far has run (every ticket is settled) and stops
    /// the threads. The pool can be used again afterwards.
    pub(crate) fn drain(&mut self) {
        self.queue = None;
        self.receiver = None;
        for worker in self.workers.drain(..) {
            // A worker never panics (it runs no user code and unwraps nothing); a join error
            // could only repeat a panic message nobody can act on.
            let _ = worker.join();
        }
    }
}

impl Drop for SyncPool {
    fn drop(&mut self) {
        self.drain();
    }
}

/// A worker: runs jobs until the queue is closed and empty.
fn work(receiver: &Mutex<Receiver<Job>>, idle: &AtomicUsize) {
    loop {
        idle.fetch_add(1, Ordering::AcqRel);
        let job = lock(receiver).recv();
        idle.fetch_sub(1, Ordering::AcqRel);
        match job {
            Ok(job) => job.run(),
            Err(_) => return,
        }
    }
}
