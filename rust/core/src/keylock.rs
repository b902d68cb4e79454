//! Cross-process locks per store key: one writer of a key at a time, in any process.
//!
//! Every directory that has seen a writer holds the lock file [`LOCK_FILE_NAME`]. A key `k`
//! (the stem of its artefacts) maps to a byte of that file, [`writer_byte`]: a stable 64-bit
//! FNV-1a hash of the stem's UTF-8 bytes. A writer of `k` (a group commit staging `k`'s temps,
//! a region reservation, a purge, a rename) holds an exclusive open-file-description lock
//! (`F_OFD_SETLKW`) on that byte from before its first temp exists until its pair is renamed
//! or its temps are removed. Two writers of one key therefore serialise; writers of different
//! keys run in parallel (a hash collision only serialises two keys). A temp sweep removes a
//! pair temp only while it holds the key's lock, taken without waiting: a temp whose key is
//! locked belongs to a live writer, and a writer holding the lock knows that any temp of its
//! key is a crash's leftover.
//!
//! The odd byte after each writer byte is the key's *holder byte*, [`holder_byte`]. A process
//! that has a live entry whose data is `<k>.dat` holds a shared lock on it ([`HolderLock`]),
//! taken before the entry can create or map that file and kept until the process's last such
//! entry is gone. Garbage collection removes a `.dat` only while it holds the holder byte
//! exclusively ([`HolderProbe`], taken without waiting): then no process has an entry on it,
//! and none can announce one until the probe ends. Nobody else ever locks a holder byte
//! exclusively, and a probe lasts only for a few metadata calls, so taking a holder never
//! waits for long: it retries for at most [`HOLD_RETRY_DELAYS`] and otherwise reports that it
//! could not hold (its caller proceeds unannounced rather than fail).
//!
//! OFD locks belong to the open file description, so a process needs one descriptor per
//! directory however many keys it holds, and a crashed process's locks vanish with it. Threads
//! of one process share that description, which the kernel never makes conflict with itself
//! (and on which a second lock of the same byte would merge with, not add to, the first), so
//! the same exclusion is kept inside the process by a table of held writer bytes and a count of
//! holders per holder byte. A forked child inherits the description but not the right to use
//! it: every use checks the pid, a child opens a description of its own, and a guard inherited
//! across `fork` releases nothing (the parent's locks stay the parent's).
//!
//! The lock file is created (mode `0666 & ~umask`, never through a link) by the first writer or
//! holder; a process that cannot open it for writing (a read-only directory) neither writes nor
//! holds. It is protocol state, not an artefact: its open and its `fcntl` calls
//! bypass the [`crate::fs::Fs`] seam so that the artefact operations fault tests count and
//! fail keep their numbering.
//!
//! Where this holds: local POSIX file systems (ext4, xfs, btrfs, tmpfs). On NFS version 4 the locks go
//! through the server's lock manager and renames are atomic on the server, but a client's
//! attribute cache may show another client's new pair late; NFS version 3 needs `lockd`. SMB and FUSE
//! file systems without POSIX byte-range locks give no guarantee.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::dir::CacheDir;
use crate::error::{Error, Op, Result};

/// The lock file of a directory. Starts with a dot, ends in no artefact suffix: never a key.
pub const LOCK_FILE_NAME: &str = ".lazy_disk_cache.lock";

/// Mode of a new lock file (the umask applies): every user who may write the store must be
/// able to lock it.
const LOCK_FILE_MODE: u32 = 0o666;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The byte of the lock file whose exclusive lock makes a process the writer of `stem`.
///
/// Part of the on-disk protocol: every version of the package must compute the same byte.
/// Bytes are even and below 2^62, so `off_t` holds them and the odd byte after each stays
/// free for a second lock per key.
pub fn writer_byte(stem: &str) -> u64 {
    let hash = stem.as_bytes().iter().fold(FNV_OFFSET, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    });
    (hash >> 3) << 1
}

/// The byte of the lock file whose shared locks mark the processes that hold an entry on
/// `stem`'s `.dat`: the odd byte after [`writer_byte`]. Part of the on-disk protocol.
pub fn holder_byte(stem: &str) -> u64 {
    writer_byte(stem) + 1
}

/// How long [`CacheDir::hold_key`] waits between its attempts while a probe holds the byte: at
/// most about 50 ms in all, many times the few metadata calls a probe lasts.
pub const HOLD_RETRY_DELAYS: [Duration; 8] = [
    Duration::from_micros(100),
    Duration::from_micros(200),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(30),
];

/// This process's use of one holder byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HolderUse {
    /// Locked shared, for this many [`HolderLock`]s.
    Shared(usize),
    /// Locked exclusively by a [`HolderProbe`].
    Probing,
}

/// One open lock file, shared by every [`CacheDir`] of its directory in this process.
#[derive(Debug)]
pub(crate) struct LockFile {
    fd: OwnedFd,
    path: PathBuf,
    pid: u32,
    identity: (u64, u64),
    /// Bytes locked by a guard of this process (the description itself never conflicts).
    held: Mutex<Vec<u64>>,
    released: Condvar,
    /// Holder bytes this process locks. The `fcntl` that changes a byte's lock runs under this
    /// mutex, so the table and the kernel's view never disagree.
    holders: Mutex<HashMap<u64, HolderUse>>,
}

/// The lock files this process has open, by (device, inode) of the file.
static LOCK_FILES: Mutex<Vec<Weak<LockFile>>> = Mutex::new(Vec::new());

impl LockFile {
    /// Opens (creating it if needed) the lock file of `dir`, or returns the one this process
    /// already has open for the same file.
    pub(crate) fn open(dir: &CacheDir) -> Result<Arc<Self>> {
        let path = dir.path_of(LOCK_FILE_NAME);
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(dir.fd(), LOCK_FILE_NAME, flags, Mode::from_raw_mode(LOCK_FILE_MODE))
            .map_err(|err| Error::io(Op::Open, &path, err.into()))?;
        let stat = rustix::fs::fstat(&fd).map_err(|err| Error::io(Op::Stat, &path, err.into()))?;
        let identity = (stat.st_dev, stat.st_ino);
        let pid = std::process::id();
        let mut open = LOCK_FILES.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|file| file.strong_count() > 0);
        if let Some(existing) = open
            .iter()
            .filter_map(Weak::upgrade)
            .find(|file| file.identity == identity && file.pid == pid)
        {
            return Ok(existing);
        }
        let file = Arc::new(Self {
            fd,
            path,
            pid,
            identity,
            held: Mutex::new(Vec::new()),
            released: Condvar::new(),
            holders: Mutex::new(HashMap::new()),
        });
        open.push(Arc::downgrade(&file));
        Ok(file)
    }

    /// Whether this description was opened by the current process (not inherited by `fork`).
    pub(crate) fn is_current(&self) -> bool {
        self.pid == std::process::id()
    }

    /// Takes the exclusive lock on `byte`, waiting when `wait`. `None` if it is held elsewhere
    /// and `wait` is false.
    fn lock(self: &Arc<Self>, byte: u64, wait: bool) -> Result<Option<KeyLock>> {
        {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            while held.contains(&byte) {
                if !wait {
                    return Ok(None);
                }
                held = self.released.wait(held).unwrap_or_else(PoisonError::into_inner);
            }
            held.push(byte);
        }
        match ofd_lock(self.fd.as_fd(), byte, libc::F_WRLCK, wait) {
            Ok(true) => Ok(Some(KeyLock {
                file: Arc::clone(self),
                byte,
            })),
            Ok(false) => {
                self.forget(byte);
                Ok(None)
            }
            Err(err) => {
                self.forget(byte);
                Err(Error::io(Op::Lock, &self.path, err))
            }
        }
    }

    fn forget(&self, byte: u64) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.retain(|&other| other != byte);
        drop(held);
        self.released.notify_all();
    }

    /// Holds the holder byte `byte` shared, retrying while a probe has it
    /// ([`HOLD_RETRY_DELAYS`]); `None` if it never got it.
    fn hold(self: &Arc<Self>, byte: u64) -> Result<Option<HolderLock>> {
        let mut delays = HOLD_RETRY_DELAYS.iter();
        loop {
            if let Some(lock) = self.try_hold(byte)? {
                return Ok(Some(lock));
            }
            match delays.next() {
                Some(&delay) => std::thread::sleep(delay),
                None => return Ok(None),
            }
        }
    }

    fn try_hold(self: &Arc<Self>, byte: u64) -> Result<Option<HolderLock>> {
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        match holders.get(&byte).copied() {
            Some(HolderUse::Probing) => return Ok(None),
            Some(HolderUse::Shared(count)) => {
                let count = count.checked_add(1).ok_or(Error::SizeOverflow)?;
                holders.insert(byte, HolderUse::Shared(count));
            }
            None => match ofd_lock(self.fd.as_fd(), byte, libc::F_RDLCK, false) {
                Ok(true) => {
                    holders.insert(byte, HolderUse::Shared(1));
                }
                Ok(false) => return Ok(None),
                Err(err) => return Err(Error::io(Op::Lock, &self.path, err)),
            },
        }
        Ok(Some(HolderLock {
            file: Arc::clone(self),
            byte,
        }))
    }

    /// One holder of `byte` lets go; the last one unlocks it.
    fn release_holder(&self, byte: u64) {
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        match holders.get(&byte).copied() {
            Some(HolderUse::Shared(count)) if count > 1 => {
                holders.insert(byte, HolderUse::Shared(count - 1));
            }
            Some(HolderUse::Shared(_)) => {
                // Cannot fail for a lock we hold on an open descriptor; should it, the lock goes
                // with the process.
                let _ = ofd_lock(self.fd.as_fd(), byte, libc::F_UNLCK, false);
                holders.remove(&byte);
            }
            Some(HolderUse::Probing) | None => {}
        }
    }

    /// Locks the holder byte `byte` exclusively if no process (this one included) holds it;
    /// `None` otherwise. Never waits.
    fn probe(self: &Arc<Self>, byte: u64) -> Result<Option<HolderProbe>> {
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        if holders.contains_key(&byte) {
            return Ok(None);
        }
        match ofd_lock(self.fd.as_fd(), byte, libc::F_WRLCK, false) {
            Ok(true) => {
                holders.insert(byte, HolderUse::Probing);
                Ok(Some(HolderProbe {
                    file: Arc::clone(self),
                    byte,
                }))
            }
            Ok(false) => Ok(None),
            Err(err) => Err(Error::io(Op::Lock, &self.path, err)),
        }
    }

    fn end_probe(&self, byte: u64) {
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        if holders.get(&byte) == Some(&HolderUse::Probing) {
            let _ = ofd_lock(self.fd.as_fd(), byte, libc::F_UNLCK, false);
            holders.remove(&byte);
        }
    }
}

/// `fcntl(F_OFD_SETLK[W])` of one byte; `Ok(false)` when a non-waiting lock is contended.
fn ofd_lock(fd: BorrowedFd<'_>, byte: u64, kind: libc::c_int, wait: bool) -> io::Result<bool> {
    let start = libc::off_t::try_from(byte).map_err(|_| io::Error::from(Errno::OVERFLOW))?;
    // SAFETY: `flock` is a plain C struct for which all-zero bytes are a valid value (and the
    // value F_OFD_* requires for `l_pid`).
    let mut request: libc::flock = unsafe { std::mem::zeroed() };
    // Both constants are small non-negative C ints that fit the `short` fields.
    #[allow(clippy::cast_possible_truncation)]
    {
        request.l_type = kind as libc::c_short;
        request.l_whence = libc::SEEK_SET as libc::c_short;
    }
    request.l_start = start;
    request.l_len = 1;
    let command = if wait { libc::F_OFD_SETLKW } else { libc::F_OFD_SETLK };
    loop {
        // SAFETY: `fd` is a descriptor borrowed for the call; F_OFD_SETLK[W] reads (and may
        // write) exactly one `struct flock`, which `request` is and which outlives the call.
        let status = unsafe { libc::fcntl(fd.as_raw_fd(), command, &raw mut request) };
        if status == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(code) if code == libc::EINTR => {}
            Some(code) if !wait && (code == libc::EAGAIN || code == libc::EACCES) => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// The writer lock of one key, released when dropped. Shared (`Arc`) by everything a writer
/// stages for the key, so the lock lasts as long as its last temp.
#[derive(Debug)]
pub struct KeyLock {
    file: Arc<LockFile>,
    byte: u64,
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        // A guard copied into a forked child must not unlock its parent's description.
        if !self.file.is_current() {
            return;
        }
        // Cannot fail for a lock we hold on an open descriptor; should it, the lock goes with
        // the process.
        let _ = ofd_lock(self.file.fd.as_fd(), self.byte, libc::F_UNLCK, false);
        self.file.forget(self.byte);
    }
}

/// This process's announcement that it holds an entry on a key's `.dat` (a shared lock on the
/// key's [`holder_byte`]), withdrawn when dropped. The byte stays locked while any guard of this
/// process on it lives; a guard inherited across `fork` withdraws nothing.
#[derive(Debug)]
pub struct HolderLock {
    file: Arc<LockFile>,
    byte: u64,
}

impl Drop for HolderLock {
    fn drop(&mut self) {
        if self.file.is_current() {
            self.file.release_holder(self.byte);
        }
    }
}

/// Proof that no process holds an entry on a key's `.dat`: the key's holder byte locked
/// exclusively, which keeps new holders out until dropped.
#[derive(Debug)]
pub struct HolderProbe {
    file: Arc<LockFile>,
    byte: u64,
}

impl Drop for HolderProbe {
    fn drop(&mut self) {
        if self.file.is_current() {
            self.file.end_probe(self.byte);
        }
    }
}

impl CacheDir {
    /// Announces that this process holds an entry whose data is `<stem>.dat`, until the guard is
    /// dropped. Costs one `fcntl` for the first guard of the key in this process and none for
    /// the others. Waits only while a garbage collection probes the key, for at most
    /// [`HOLD_RETRY_DELAYS`]; `None` if the probe outlasted them. Creates the lock file on
    /// first use.
    ///
    /// # Errors
    /// As [`CacheDir::lock_key`] (a read-only directory refuses to open the lock file).
    pub fn hold_key(&self, stem: &str) -> Result<Option<HolderLock>> {
        crate::names::validate_name(stem)?;
        self.lock_file()?.hold(holder_byte(stem))
    }

    /// Keeps every new holder of `stem` out if no process (this one included) holds an entry
    /// on `<stem>.dat`; `None` when one does. Never waits.
    ///
    /// # Errors
    /// As [`CacheDir::lock_key`].
    pub fn probe_key_holders(&self, stem: &str) -> Result<Option<HolderProbe>> {
        crate::names::validate_name(stem)?;
        self.lock_file()?.probe(holder_byte(stem))
    }

    /// Becomes the writer of `stem` (an artefact stem, i.e. a store key), waiting while another
    /// thread or process is. Creates the lock file on first use.
    ///
    /// # Errors
    /// [`Error::InvalidName`]; [`Error::Io`] with [`Op::Open`] / [`Op::Stat`] for the lock file,
    /// [`Op::Lock`] when `fcntl` fails (e.g. `ENOLCK`).
    pub fn lock_key(&self, stem: &str) -> Result<KeyLock> {
        crate::names::validate_name(stem)?;
        let file = self.lock_file()?;
        // A waiting lock never reports contention; the error is only built should it.
        file.lock(writer_byte(stem), true)?
            .ok_or_else(|| Error::io(Op::Lock, &file.path, io::Error::from(Errno::AGAIN)))
    }

    /// Becomes the writer of `stem` if nobody is; `None` otherwise. Never waits.
    ///
    /// # Errors
    /// As [`CacheDir::lock_key`].
    pub fn try_lock_key(&self, stem: &str) -> Result<Option<KeyLock>> {
        crate::names::validate_name(stem)?;
        self.lock_file()?.lock(writer_byte(stem), false)
    }
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::fs;
    use std::os::fd::AsFd;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    use super::*;
    use crate::dir::open_temp_dir;

    #[test]
    fn writer_byte_is_the_documented_fnv1a_hash_even_and_below_two_to_the_62() {
        assert_eq!(writer_byte("k"), 3_159_549_548_917_981_026);
        for stem in ["k", "", "θ-ключ", &"x".repeat(300)] {
            let byte = writer_byte(stem);
            assert_eq!(byte % 2, 0, "{stem:?}");
            assert!(byte < 1 << 62, "{stem:?}");
        }
        assert_ne!(writer_byte("a"), writer_byte("b"));
    }

    /// A description of `dir`'s lock file of its own, as another process would have.
    fn other_description(tmp: &tempfile::TempDir) -> fs::File {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(tmp.path().join(LOCK_FILE_NAME))
            .unwrap()
    }

    #[test]
    fn the_holder_byte_is_the_odd_byte_after_the_writer_byte() {
        for stem in ["k", "", "θ-ключ"] {
            assert_eq!(holder_byte(stem), writer_byte(stem) + 1, "{stem:?}");
            assert_eq!(holder_byte(stem) % 2, 1, "{stem:?}");
        }
    }

    #[test]
    fn a_held_key_keeps_probes_out_until_the_last_holder_of_the_process_goes() {
        let (tmp, dir) = open_temp_dir();
        let other = CacheDir::open(tmp.path(), false).unwrap();

        let first = dir.hold_key("k").unwrap().unwrap();
        let second = other.hold_key("k").unwrap().unwrap();

        assert!(dir.probe_key_holders("k").unwrap().is_none());
        assert!(dir.probe_key_holders("j").unwrap().is_some(), "other keys are free");
        drop(first);
        assert!(dir.probe_key_holders("k").unwrap().is_none(), "one holder is left");
        drop(second);
        assert!(dir.probe_key_holders("k").unwrap().is_some());
    }

    #[test]
    fn another_process_sees_a_held_key_as_held_and_may_hold_it_too() {
        let (tmp, dir) = open_temp_dir();
        let held = dir.hold_key("k").unwrap().unwrap();
        let elsewhere = other_description(&tmp);

        let probed = ofd_lock(elsewhere.as_fd(), holder_byte("k"), libc::F_WRLCK, false).unwrap();
        let shared = ofd_lock(elsewhere.as_fd(), holder_byte("k"), libc::F_RDLCK, false).unwrap();

        assert!(!probed, "an exclusive probe elsewhere must fail while the key is held");
        assert!(shared, "holders share the byte");
        drop(held);
    }

    #[test]
    fn a_probe_that_outlasts_the_retries_leaves_the_holder_unannounced_without_error() {
        let (_tmp, dir) = open_temp_dir();
        let probe = dir.probe_key_holders("k").unwrap().unwrap();

        let held = dir.hold_key("k").unwrap();

        assert!(held.is_none());
        drop(probe);
        assert!(dir.hold_key("k").unwrap().is_some());
    }

    #[test]
    fn holding_and_probing_a_key_leave_its_writer_byte_alone() {
        let (_tmp, dir) = open_temp_dir();

        let held = dir.hold_key("k").unwrap().unwrap();
        let writer = dir.try_lock_key("k").unwrap();
        assert!(writer.is_some(), "a holder does not keep writers out");
        drop(held);
        let probe = dir.probe_key_holders("k").unwrap();

        assert!(probe.is_some(), "a writer does not look like a holder");
        drop((writer, probe));
    }

    #[test]
    fn a_held_key_refuses_a_second_writer_from_another_handle_until_dropped() {
        let (tmp, dir) = open_temp_dir();
        let other = CacheDir::open(tmp.path(), false).unwrap();

        let held = dir.lock_key("k").unwrap();

        assert!(other.try_lock_key("k").unwrap().is_none());
        assert!(other.try_lock_key("j").unwrap().is_some(), "other keys are free");
        drop(held);
        assert!(other.try_lock_key("k").unwrap().is_some());
    }

    #[test]
    fn a_waiting_writer_proceeds_when_the_holder_lets_go() {
        let (tmp, dir) = open_temp_dir();
        let held = dir.lock_key("k").unwrap();
        let (tx, rx) = mpsc::channel();
        let root = tmp.path().to_path_buf();

        let waiter = thread::spawn(move || {
            let other = CacheDir::open(&root, false).unwrap();
            let lock = other.lock_key("k").unwrap();
            tx.send(()).unwrap();
            drop(lock);
        });

        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "waited while held"
        );
        drop(held);
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        waiter.join().unwrap();
    }

    #[test]
    fn every_handle_of_a_directory_shares_one_lock_file_description() {
        let (tmp, dir) = open_temp_dir();
        let other = CacheDir::open(tmp.path(), false).unwrap();

        let first = dir.lock_file().unwrap();
        let second = other.lock_file().unwrap();

        assert!(Arc::ptr_eq(&first, &second));
    }

    #[test]
    fn the_lock_file_gets_0666_under_the_umask_and_is_never_a_key() {
        let (tmp, dir) = open_temp_dir();
        let reference = tmp.path().join("reference");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&reference)
            .unwrap();

        drop(dir.lock_key("k").unwrap());

        let mode = |path: &std::path::Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&tmp.path().join(LOCK_FILE_NAME)), mode(&reference));
        assert!(!crate::names::is_temp_name(LOCK_FILE_NAME));
        assert!(crate::names::pair_temp_key(LOCK_FILE_NAME).is_none());
    }

    #[test]
    fn a_planted_lock_file_link_is_refused_and_its_target_untouched() {
        let (tmp, dir) = open_temp_dir();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("precious");
        fs::write(&target, b"keep").unwrap();
        symlink(&target, tmp.path().join(LOCK_FILE_NAME)).unwrap();

        let err = dir.lock_key("k").unwrap_err();

        assert!(matches!(err, Error::Io { op: Op::Open, .. }), "{err}");
        assert_eq!(err.raw_os_error(), Some(Errno::LOOP.raw_os_error()));
        assert_eq!(fs::read(&target).unwrap(), b"keep");
    }
}
