//! Test doubles for the seam: [`FaultyFs`] fails the N-th call of one operation,
//! [`RecordingFs`] records the ordered list of calls with the names they touched, and
//! [`CopyPathFs`] pins which range-copy mechanism runs (reflink, `copy_file_range` or the
//! bounce buffer) whatever the filesystem under the test supports.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rustix::fs::OFlags;
use rustix::io::Errno;

use super::{FileStat, Fs, RealFs};
use crate::error::Op;

fn open_op(flags: OFlags) -> Op {
    if flags.contains(OFlags::CREATE) {
        Op::Create
    } else {
        Op::Open
    }
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

    fn check(&self, op: Op) -> io::Result<()> {
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

impl Fs for FaultyFs {
    fn open(&self, dir: BorrowedFd<'_>, name: &str, flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
        self.check(open_op(flags))?;
        self.inner.open(dir, name, flags, mode)
    }
    fn mkdir(&self, dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<()> {
        self.check(Op::Mkdir)?;
        self.inner.mkdir(dir, name, mode)
    }
    fn fallocate(&self, fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
        self.check(Op::Reserve)?;
        self.inner.fallocate(fd, len)
    }
    fn truncate(&self, fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
        self.check(Op::Reserve)?;
        self.inner.truncate(fd, len)
    }
    fn pwrite(&self, fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.check(Op::Write)?;
        self.inner.pwrite(fd, buf, offset)
    }
    fn pread(&self, fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.check(Op::Read)?;
        self.inner.pread(fd, buf, offset)
    }
    fn fsync(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.check(Op::Fsync)?;
        self.inner.fsync(fd)
    }
    fn fsync_dir(&self, dir: BorrowedFd<'_>) -> io::Result<()> {
        self.check(Op::DirFsync)?;
        self.inner.fsync_dir(dir)
    }
    fn rename(&self, dir: BorrowedFd<'_>, from: &str, to: &str) -> io::Result<()> {
        self.check(Op::Rename)?;
        self.inner.rename(dir, from, to)
    }
    fn unlink(&self, dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
        self.check(Op::Unlink)?;
        self.inner.unlink(dir, name)
    }
    fn fstat(&self, fd: BorrowedFd<'_>) -> io::Result<FileStat> {
        self.check(Op::Stat)?;
        self.inner.fstat(fd)
    }
    fn stat_nofollow(&self, dir: BorrowedFd<'_>, name: &str) -> io::Result<FileStat> {
        self.check(Op::Stat)?;
        self.inner.stat_nofollow(dir, name)
    }
    fn lock_exclusive(&self, fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<()> {
        self.check(Op::Lock)?;
        self.inner.lock_exclusive(fd, nonblocking)
    }
    fn lock_shared(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.check(Op::Lock)?;
        self.inner.lock_shared(fd)
    }
    fn fchmod(&self, fd: BorrowedFd<'_>, perm: u32) -> io::Result<()> {
        self.check(Op::Chmod)?;
        self.inner.fchmod(fd, perm)
    }
    fn copy_file_range(
        &self,
        src: BorrowedFd<'_>,
        src_offset: u64,
        dst: BorrowedFd<'_>,
        dst_offset: u64,
        len: usize,
    ) -> io::Result<usize> {
        self.check(Op::Copy)?;
        self.inner.copy_file_range(src, src_offset, dst, dst_offset, len)
    }
    fn clone_range(
        &self,
        src: BorrowedFd<'_>,
        src_offset: u64,
        dst: BorrowedFd<'_>,
        dst_offset: u64,
        len: u64,
    ) -> io::Result<()> {
        self.check(Op::Copy)?;
        self.inner.clone_range(src, src_offset, dst, dst_offset, len)
    }
    fn list(&self, dir: BorrowedFd<'_>) -> io::Result<Vec<String>> {
        self.check(Op::List)?;
        self.inner.list(dir)
    }
    fn map_gate(&self, path: &Path) -> io::Result<()> {
        self.check(Op::Map)?;
        self.inner.map_gate(path)
    }
}

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

    /// FICLONERANGE semantics by plain copying: all `len` bytes or an error (EINVAL when the
    /// source ends first).
    fn emulate_clone(
        &self,
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
            let read = self.inner.pread(src, piece, src_offset + done)?;
            if read == 0 {
                return Err(io::Error::from(Errno::INVAL));
            }
            let mut written = 0;
            while written < read {
                let n = self
                    .inner
                    .pwrite(dst, &piece[written..read], dst_offset + done + written as u64)?;
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

impl Fs for CopyPathFs {
    fn open(&self, dir: BorrowedFd<'_>, name: &str, flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
        self.inner.open(dir, name, flags, mode)
    }
    fn mkdir(&self, dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<()> {
        self.inner.mkdir(dir, name, mode)
    }
    fn fallocate(&self, fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
        self.inner.fallocate(fd, len)
    }
    fn truncate(&self, fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
        self.inner.truncate(fd, len)
    }
    fn pwrite(&self, fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.inner.pwrite(fd, buf, offset)
    }
    fn pread(&self, fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.pread(fd, buf, offset)
    }
    fn fsync(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.inner.fsync(fd)
    }
    fn fsync_dir(&self, dir: BorrowedFd<'_>) -> io::Result<()> {
        self.inner.fsync_dir(dir)
    }
    fn rename(&self, dir: BorrowedFd<'_>, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(dir, from, to)
    }
    fn unlink(&self, dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
        self.inner.unlink(dir, name)
    }
    fn fstat(&self, fd: BorrowedFd<'_>) -> io::Result<FileStat> {
        self.inner.fstat(fd)
    }
    fn stat_nofollow(&self, dir: BorrowedFd<'_>, name: &str) -> io::Result<FileStat> {
        self.inner.stat_nofollow(dir, name)
    }
    fn lock_exclusive(&self, fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<()> {
        self.inner.lock_exclusive(fd, nonblocking)
    }
    fn lock_shared(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.inner.lock_shared(fd)
    }
    fn fchmod(&self, fd: BorrowedFd<'_>, perm: u32) -> io::Result<()> {
        self.inner.fchmod(fd, perm)
    }
    fn copy_file_range(
        &self,
        src: BorrowedFd<'_>,
        src_offset: u64,
        dst: BorrowedFd<'_>,
        dst_offset: u64,
        len: usize,
    ) -> io::Result<usize> {
        if self.path == CopyPath::Bounce {
            return Err(io::Error::from(Errno::XDEV));
        }
        let copied = self.inner.copy_file_range(src, src_offset, dst, dst_offset, len)?;
        self.kernel_copies.fetch_add(1, Ordering::SeqCst);
        Ok(copied)
    }
    fn clone_range(
        &self,
        src: BorrowedFd<'_>,
        src_offset: u64,
        dst: BorrowedFd<'_>,
        dst_offset: u64,
        len: u64,
    ) -> io::Result<()> {
        if self.path != CopyPath::Reflink {
            return Err(io::Error::from(Errno::OPNOTSUPP));
        }
        self.emulate_clone(src, src_offset, dst, dst_offset, len)?;
        self.clones.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn list(&self, dir: BorrowedFd<'_>) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn map_gate(&self, path: &Path) -> io::Result<()> {
        self.inner.map_gate(path)
    }
}

/// One recorded filesystem call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The operation.
    pub op: Op,
    /// The name it touched (`"."` for the directory itself, `"?"` for an unknown fd).
    pub name: String,
    /// The rename target, for renames.
    pub to: Option<String>,
    /// Whether the call succeeded.
    pub ok: bool,
}

/// Wraps another [`Fs`] and records every call in order.
#[derive(Debug)]
pub struct RecordingFs {
    inner: Arc<dyn Fs>,
    calls: Mutex<Vec<Call>>,
    fd_names: Mutex<HashMap<i32, String>>,
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
        }
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

    fn record<T>(&self, op: Op, name: String, to: Option<String>, result: io::Result<T>) -> io::Result<T> {
        let call = Call {
            op,
            name,
            to,
            ok: result.is_ok(),
        };
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).push(call);
        result
    }
}

impl Fs for RecordingFs {
    fn open(&self, dir: BorrowedFd<'_>, name: &str, flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
        let result = self.inner.open(dir, name, flags, mode);
        if let Ok(fd) = &result {
            let mut names = self.fd_names.lock().unwrap_or_else(PoisonError::into_inner);
            names.insert(fd.as_raw_fd(), name.to_owned());
        }
        self.record(open_op(flags), name.to_owned(), None, result)
    }
    fn mkdir(&self, dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<()> {
        let result = self.inner.mkdir(dir, name, mode);
        self.record(Op::Mkdir, name.to_owned(), None, result)
    }
    fn fallocate(&self, fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
        let result = self.inner.fallocate(fd, len);
        self.record(Op::Reserve, self.fd_name(fd), None, result)
    }
    fn truncate(&self, fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
        let result = self.inner.truncate(fd, len);
        self.record(Op::Reserve, self.fd_name(fd), None, result)
    }
    fn pwrite(&self, fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<usize> {
        let result = self.inner.pwrite(fd, buf, offset);
        self.record(Op::Write, self.fd_name(fd), None, result)
    }
    fn pread(&self, fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let result = self.inner.pread(fd, buf, offset);
        self.record(Op::Read, self.fd_name(fd), None, result)
    }
    fn fsync(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let result = self.inner.fsync(fd);
        self.record(Op::Fsync, self.fd_name(fd), None, result)
    }
    fn fsync_dir(&self, dir: BorrowedFd<'_>) -> io::Result<()> {
        let result = self.inner.fsync_dir(dir);
        self.record(Op::DirFsync, ".".to_owned(), None, result)
    }
    fn rename(&self, dir: BorrowedFd<'_>, from: &str, to: &str) -> io::Result<()> {
        let result = self.inner.rename(dir, from, to);
        self.record(Op::Rename, from.to_owned(), Some(to.to_owned()), result)
    }
    fn unlink(&self, dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
        let result = self.inner.unlink(dir, name);
        self.record(Op::Unlink, name.to_owned(), None, result)
    }
    fn fstat(&self, fd: BorrowedFd<'_>) -> io::Result<FileStat> {
        let result = self.inner.fstat(fd);
        self.record(Op::Stat, self.fd_name(fd), None, result)
    }
    fn stat_nofollow(&self, dir: BorrowedFd<'_>, name: &str) -> io::Result<FileStat> {
        let result = self.inner.stat_nofollow(dir, name);
        self.record(Op::Stat, name.to_owned(), None, result)
    }
    fn lock_exclusive(&self, fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<()> {
        let result = self.inner.lock_exclusive(fd, nonblocking);
        self.record(Op::Lock, self.fd_name(fd), None, result)
    }
    fn lock_shared(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let result = self.inner.lock_shared(fd);
        self.record(Op::Lock, self.fd_name(fd), None, result)
    }
    fn fchmod(&self, fd: BorrowedFd<'_>, perm: u32) -> io::Result<()> {
        let result = self.inner.fchmod(fd, perm);
        self.record(Op::Chmod, self.fd_name(fd), None, result)
    }
    fn copy_file_range(
        &self,
        src: BorrowedFd<'_>,
        src_offset: u64,
        dst: BorrowedFd<'_>,
        dst_offset: u64,
        len: usize,
    ) -> io::Result<usize> {
        let result = self.inner.copy_file_range(src, src_offset, dst, dst_offset, len);
        self.record(Op::Copy, self.fd_name(dst), Some(self.fd_name(src)), result)
    }
    fn clone_range(
        &self,
        src: BorrowedFd<'_>,
        src_offset: u64,
        dst: BorrowedFd<'_>,
        dst_offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let result = self.inner.clone_range(src, src_offset, dst, dst_offset, len);
        self.record(Op::Copy, self.fd_name(dst), Some(self.fd_name(src)), result)
    }
    fn list(&self, dir: BorrowedFd<'_>) -> io::Result<Vec<String>> {
        let result = self.inner.list(dir);
        self.record(Op::List, ".".to_owned(), None, result)
    }
    fn map_gate(&self, path: &Path) -> io::Result<()> {
        let result = self.inner.map_gate(path);
        let name = path
            .file_name()
            .map_or_else(|| "?".to_owned(), |n| n.to_string_lossy().into_owned());
        self.record(Op::Map, name, None, result)
    }
}
