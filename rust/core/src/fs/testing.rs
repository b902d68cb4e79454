//! Test doubles for the seam: [`FaultyFs`] fails the N-th call of one operation,
//! [`RecordingFs`] records the ordered list of calls with the names they touched, and
//! [`CopyPathFs`] pins which range-copy mechanism runs (reflink, `copy_file_range` or the
//! bounce buffer) whatever the filesystem under the test supports.
//!
//! Each double is a [`Hook`] around an inner [`Fs`]; [`forward_through_hook`] writes the
//! forwarding once for all of them.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rustix::fs::OFlags;
use rustix::io::Errno;

use super::{FileStat, Fs, RealFs, open_op};
use crate::error::Op;

/// What a forwarded call works on, as a [`Hook`] sees it.
#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    /// A name in the directory.
    Name(&'a str),
    /// An open file.
    File(BorrowedFd<'a>),
    /// An open file resized by `ftruncate` (a reservation fallback, not an allocation).
    Resize(BorrowedFd<'a>),
    /// The directory itself.
    Dir,
    /// A rename of `from` to `to`.
    Rename { from: &'a str, to: &'a str },
    /// A `copy_file_range` from `src` into `dst`.
    KernelCopy { src: BorrowedFd<'a>, dst: BorrowedFd<'a> },
    /// A `clone_range` from `src` into `dst`.
    Clone { src: BorrowedFd<'a>, dst: BorrowedFd<'a> },
    /// A file about to be mapped.
    Map(&'a Path),
}

/// What a double adds around each call it forwards to its inner seam.
trait Hook {
    /// Runs before the call; an error fails the call without forwarding it.
    fn before(&self, _op: Op, _target: Target<'_>) -> io::Result<()> {
        Ok(())
    }

    /// Runs after a forwarded call, with whether it succeeded.
    fn after(&self, _op: Op, _target: Target<'_>, _ok: bool) {}

    /// Runs when a forwarded `open` with `flags` returned `fd` for `name`.
    fn opened(&self, _fd: BorrowedFd<'_>, _name: &str, _flags: OFlags) {}

    /// Carries out a `clone_range` that passed [`Hook::before`]; a double that emulates
    /// reflinks does it here instead of forwarding to `inner`.
    fn clone_on(
        &self,
        inner: &dyn Fs,
        src: BorrowedFd<'_>,
        src_offset: u64,
        dst: BorrowedFd<'_>,
        dst_offset: u64,
        len: u64,
    ) -> io::Result<()> {
        inner.clone_range(src, src_offset, dst, dst_offset, len)
    }

    /// `call` between [`Hook::before`] and [`Hook::after`].
    fn around<T>(&self, op: Op, target: Target<'_>, call: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        self.before(op, target)?;
        let result = call();
        self.after(op, target, result.is_ok());
        result
    }
}

/// Implements [`Fs`] for a [`Hook`] with an `inner: Arc<dyn Fs>` field: every call goes
/// through [`Hook::around`] to the same call on `inner`.
macro_rules! forward_through_hook {
    ($double:ty) => {
        impl Fs for $double {
            fn open(&self, dir: BorrowedFd<'_>, name: &str, flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
                self.around(open_op(flags), Target::Name(name), || {
                    let fd = self.inner.open(dir, name, flags, mode)?;
                    self.opened(fd.as_fd(), name, flags);
                    Ok(fd)
                })
            }
            fn mkdir(&self, dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<()> {
                self.around(Op::Mkdir, Target::Name(name), || {
                    self.inner.mkdir(dir, name, mode)
                })
            }
            fn fallocate(&self, fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
                self.around(Op::Reserve, Target::File(fd), || self.inner.fallocate(fd, len))
            }
            fn truncate(&self, fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
                self.around(Op::Reserve, Target::Resize(fd), || self.inner.truncate(fd, len))
            }
            fn pwrite(&self, fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<usize> {
                self.around(Op::Write, Target::File(fd), || self.inner.pwrite(fd, buf, offset))
            }
            fn pread(&self, fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
                self.around(Op::Read, Target::File(fd), || self.inner.pread(fd, buf, offset))
            }
            fn fsync(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
                self.around(Op::Fsync, Target::File(fd), || self.inner.fsync(fd))
            }
            fn start_writeback(&self, fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
                self.around(Op::Writeback, Target::File(fd), || {
                    self.inner.start_writeback(fd, offset, len)
                })
            }
            fn fsync_dir(&self, dir: BorrowedFd<'_>) -> io::Result<()> {
                self.around(Op::DirFsync, Target::Dir, || self.inner.fsync_dir(dir))
            }
            fn rename(&self, dir: BorrowedFd<'_>, from: &str, to: &str) -> io::Result<()> {
                self.around(Op::Rename, Target::Rename { from, to }, || {
                    self.inner.rename(dir, from, to)
                })
            }
            fn unlink(&self, dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
                self.around(Op::Unlink, Target::Name(name), || self.inner.unlink(dir, name))
            }
            fn fstat(&self, fd: BorrowedFd<'_>) -> io::Result<FileStat> {
                self.around(Op::Stat, Target::File(fd), || self.inner.fstat(fd))
            }
            fn stat_nofollow(&self, dir: BorrowedFd<'_>, name: &str) -> io::Result<FileStat> {
                self.around(Op::Stat, Target::Name(name), || {
                    self.inner.stat_nofollow(dir, name)
                })
            }
            fn lock_exclusive(&self, fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<()> {
                self.around(Op::Lock, Target::File(fd), || {
                    self.inner.lock_exclusive(fd, nonblocking)
                })
            }
            fn lock_shared(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
                self.around(Op::Lock, Target::File(fd), || self.inner.lock_shared(fd))
            }
            fn fchmod(&self, fd: BorrowedFd<'_>, perm: u32) -> io::Result<()> {
                self.around(Op::Chmod, Target::File(fd), || self.inner.fchmod(fd, perm))
            }
            fn copy_file_range(
                &self,
                src: BorrowedFd<'_>,
                src_offset: u64,
                dst: BorrowedFd<'_>,
                dst_offset: u64,
                len: usize,
            ) -> io::Result<usize> {
                self.around(Op::Copy, Target::KernelCopy { src, dst }, || {
                    self.inner.copy_file_range(src, src_offset, dst, dst_offset, len)
                })
            }
            fn clone_range(
                &self,
                src: BorrowedFd<'_>,
                src_offset: u64,
                dst: BorrowedFd<'_>,
                dst_offset: u64,
                len: u64,
            ) -> io::Result<()> {
                self.around(Op::Copy, Target::Clone { src, dst }, || {
                    self.clone_on(&*self.inner, src, src_offset, dst, dst_offset, len)
                })
            }
            fn list(&self, dir: BorrowedFd<'_>) -> io::Result<Vec<String>> {
                self.around(Op::List, Target::Dir, || self.inner.list(dir))
            }
            fn map_gate(&self, path: &Path) -> io::Result<()> {
                self.around(Op::Map, Target::Map(path), || self.inner.map_gate(path))
            }
            fn refuses_writes(&self, dir: BorrowedFd<'_>) -> io::Result<bool> {
                self.around(Op::Stat, Target::Dir, || self.inner.refuses_writes(dir))
            }
        }
    };
}

/// Wraps another [`Fs`] and makes the `nth` (1-based) call of `op` fail with `errno`.
#[derive(Debug)]
pub struct FaultyFs {
    inner: Arc<dyn Fs>,
    op: Op,
    nth: u64,
    errno: i32,
    seen: AtomicU64,
    fired: AtomicBool,
    armed: AtomicBool,
}

impl FaultyFs {
    /// Fails the `nth` call of `op` on the real filesystem with `errno`.
    pub fn new(op: Op, nth: u64, errno: i32) -> Self {
        Self::wrapping(Arc::new(RealFs), op, nth, errno)
    }

    /// Fails the `nth` call of `op` on `inner` with `errno`.
    pub fn wrapping(inner: Arc<dyn Fs>, op: Op, nth: u64, errno: i32) -> Self {
        Self {
            inner,
            op,
            nth,
            errno,
            seen: AtomicU64::new(0),
            fired: AtomicBool::new(false),
            armed: AtomicBool::new(true),
        }
    }

    /// Pauses (`false`) or resumes (`true`) the fault; calls made while paused are not
    /// counted. Armed from construction.
    pub fn set_armed(&self, armed: bool) {
        self.armed.store(armed, Ordering::SeqCst);
    }

    /// Whether the fault has been triggered.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// How many calls of the target operation were made.
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }
}

impl Hook for FaultyFs {
    fn before(&self, op: Op, _target: Target<'_>) -> io::Result<()> {
        if !self.armed.load(Ordering::SeqCst) {
            return Ok(());
        }
        if op == self.op && self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.nth {
            self.fired.store(true, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(self.errno));
        }
        Ok(())
    }
}

forward_through_hook!(FaultyFs);

/// The range-copy mechanism [`CopyPathFs`] lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyPath {
    /// `clone_range` succeeds, emulated by copying the bytes through the wrapped seam (as on a
    /// reflink-capable filesystem); `copy_file_range` passes through.
    Reflink,
    /// `clone_range` fails with EOPNOTSUPP (as on ext4); `copy_file_range` passes through.
    KernelCopy,
    /// `clone_range` fails with EOPNOTSUPP and `copy_file_range` with EXDEV (as across
    /// filesystems on older kernels), so only the bounce buffer is left.
    Bounce,
}

/// Size of the piece [`CopyPathFs`] moves per read when it emulates a reflink.
const EMULATED_CLONE_PIECE: usize = 64 << 10;

/// Wraps another [`Fs`] and pins the range-copy mechanism to one [`CopyPath`]; every other
/// call passes through. Counts the clone and `copy_file_range` calls that succeeded.
#[derive(Debug)]
pub struct CopyPathFs {
    inner: Arc<dyn Fs>,
    path: CopyPath,
    clones: AtomicU64,
    kernel_copies: AtomicU64,
}

impl CopyPathFs {
    /// Pins `path` on the real filesystem.
    pub fn new(path: CopyPath) -> Self {
        Self::wrapping(Arc::new(RealFs), path)
    }

    /// Pins `path` on `inner`.
    pub fn wrapping(inner: Arc<dyn Fs>, path: CopyPath) -> Self {
        Self {
            inner,
            path,
            clones: AtomicU64::new(0),
            kernel_copies: AtomicU64::new(0),
        }
    }

    /// How many `clone_range` calls succeeded.
    pub fn clones(&self) -> u64 {
        self.clones.load(Ordering::SeqCst)
    }

    /// How many `copy_file_range` calls succeeded.
    pub fn kernel_copies(&self) -> u64 {
        self.kernel_copies.load(Ordering::SeqCst)
    }
}

impl Hook for CopyPathFs {
    fn before(&self, _op: Op, target: Target<'_>) -> io::Result<()> {
        match target {
            Target::Clone { .. } if self.path != CopyPath::Reflink => Err(io::Error::from(Errno::OPNOTSUPP)),
            Target::KernelCopy { .. } if self.path == CopyPath::Bounce => Err(io::Error::from(Errno::XDEV)),
            _ => Ok(()),
        }
    }

    fn after(&self, _op: Op, target: Target<'_>, ok: bool) {
        let counter = match target {
            Target::Clone { .. } => &self.clones,
            Target::KernelCopy { .. } => &self.kernel_copies,
            _ => return,
        };
        if ok {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// FICLONERANGE semantics by plain copying: all `len` bytes or an error (EINVAL when the
    /// source ends first).
    fn clone_on(
        &self,
        inner: &dyn Fs,
        src: BorrowedFd<'_>,
        src_offset: u64,
        dst: BorrowedFd<'_>,
        dst_offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; EMULATED_CLONE_PIECE];
        let mut done = 0u64;
        while done < len {
            let want = usize::try_from(len - done).map_or(buf.len(), |rest| rest.min(buf.len()));
            let piece = &mut buf[..want];
            let read = inner.pread(src, piece, src_offset + done)?;
            if read == 0 {
                return Err(io::Error::from(Errno::INVAL));
            }
            let mut written = 0;
            while written < read {
                let n = inner.pwrite(dst, &piece[written..read], dst_offset + done + written as u64)?;
                if n == 0 {
                    return Err(io::Error::from(Errno::NOSPC));
                }
                written += n;
            }
            done += read as u64;
        }
        Ok(())
    }
}

forward_through_hook!(CopyPathFs);

/// One recorded filesystem call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The operation.
    pub op: Op,
    /// The system call behind it (`"fallocate"` and `"ftruncate"` are both [`Op::Reserve`]).
    pub syscall: &'static str,
    /// The name it touched (`"."` for the directory itself, `"?"` for an unknown fd).
    pub name: String,
    /// The rename target, for renames.
    pub to: Option<String>,
    /// Whether the call succeeded.
    pub ok: bool,
}

/// The system call behind a forwarded call.
fn syscall_of(op: Op, target: Target<'_>) -> &'static str {
    match (op, target) {
        (Op::Open | Op::Create, _) => "openat",
        (Op::Mkdir, _) => "mkdirat",
        (Op::Reserve, Target::Resize(_)) => "ftruncate",
        (Op::Reserve, _) => "fallocate",
        (Op::Write, _) => "pwrite",
        (Op::Read, _) => "pread",
        (Op::Fsync | Op::DirFsync, _) => "fsync",
        (Op::Writeback, _) => "sync_file_range",
        (Op::Rename, _) => "renameat",
        (Op::Unlink, _) => "unlinkat",
        (Op::Stat, Target::Name(_)) => "fstatat",
        (Op::Stat, Target::Dir) => "faccessat",
        (Op::Stat, _) => "fstat",
        (Op::Lock, _) => "flock",
        (Op::Chmod, _) => "fchmod",
        (Op::Copy, Target::Clone { .. }) => "ioctl(FICLONERANGE)",
        (Op::Copy, _) => "copy_file_range",
        (Op::Map, _) => "mmap",
        (Op::List, _) => "getdents64",
    }
}

/// Wraps another [`Fs`] and records every call in order, and the permission bits of every
/// file it saw created, as `fstat` reported them right after the `open` (before any other
/// call on the file).
#[derive(Debug)]
pub struct RecordingFs {
    inner: Arc<dyn Fs>,
    calls: Mutex<Vec<Call>>,
    fd_names: Mutex<HashMap<i32, String>>,
    created: Mutex<Vec<(String, u32)>>,
}

impl Default for RecordingFs {
    fn default() -> Self {
        Self::wrapping(Arc::new(RealFs))
    }
}

impl RecordingFs {
    /// Records calls made to the real filesystem.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records calls made to `inner`.
    pub fn wrapping(inner: Arc<dyn Fs>) -> Self {
        Self {
            inner,
            calls: Mutex::new(Vec::new()),
            fd_names: Mutex::new(HashMap::new()),
            created: Mutex::new(Vec::new()),
        }
    }

    /// The name and permission bits of each file created through the seam, in order, as the
    /// file was right after its `open(O_CREAT)`.
    pub fn created_perms(&self) -> Vec<(String, u32)> {
        self.created.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The calls recorded so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Forgets the calls recorded so far.
    pub fn clear(&self) {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    fn fd_name(&self, fd: BorrowedFd<'_>) -> String {
        let names = self.fd_names.lock().unwrap_or_else(PoisonError::into_inner);
        names.get(&fd.as_raw_fd()).cloned().unwrap_or_else(|| "?".to_owned())
    }
}

impl Hook for RecordingFs {
    fn opened(&self, fd: BorrowedFd<'_>, name: &str, flags: OFlags) {
        let mut names = self.fd_names.lock().unwrap_or_else(PoisonError::into_inner);
        names.insert(fd.as_raw_fd(), name.to_owned());
        if flags.contains(OFlags::CREATE) {
            // Straight to the kernel, not through `inner`: an observation must not count as a
            // call of the seam under test (a fault double would shift its count).
            if let Ok(stat) = rustix::fs::fstat(fd) {
                let perm = stat.st_mode & 0o7777;
                self.created
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((name.to_owned(), perm));
            }
        }
    }

    fn after(&self, op: Op, target: Target<'_>, ok: bool) {
        let (name, to) = match target {
            Target::Name(name) => (name.to_owned(), None),
            Target::File(fd) | Target::Resize(fd) => (self.fd_name(fd), None),
            Target::Dir => (".".to_owned(), None),
            Target::Rename { from, to } => (from.to_owned(), Some(to.to_owned())),
            Target::KernelCopy { src, dst } | Target::Clone { src, dst } => {
                (self.fd_name(dst), Some(self.fd_name(src)))
            }
            Target::Map(path) => {
                let name = path
                    .file_name()
                    .map_or_else(|| "?".to_owned(), |n| n.to_string_lossy().into_owned());
                (name, None)
            }
        };
        let call = Call {
            op,
            syscall: syscall_of(op, target),
            name,
            to,
            ok,
        };
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).push(call);
    }
}

forward_through_hook!(RecordingFs);
