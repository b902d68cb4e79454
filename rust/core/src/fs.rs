//! The filesystem seam: every system call the core makes goes through [`Fs`], so each step
//! can be counted, recorded or made to fail in a test.
//!
//! [`RealFs`] is the production implementation (rustix, fd-relative calls only). It consults
//! the process-global fault table ([`inject_fault`], [`clear_faults`], [`op_counts`]) that the
//! Python testing seam drives; while nothing is injected that costs one relaxed atomic load
//! (plus one relaxed counter increment) per call. Behind the `testing` feature, [`FaultyFs`],
//! [`RecordingFs`] and [`CopyPathFs`] wrap another `Fs` for the core's own tests.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use rustix::fs::{Access, AtFlags, FallocateFlags, FileType, FlockOperation, Mode, OFlags, StatVfsMountFlags};

use crate::error::Op;

/// What the core needs to know about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    /// Size in bytes.
    pub len: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub perm: u32,
    /// File type.
    pub kind: FileKind,
    /// Preferred I/O block size, also the reflink granularity we assume.
    pub blksize: u64,
    /// Device and inode: which file this is, whatever its name now.
    pub identity: (u64, u64),
    /// Last status change (`st_ctime`, seconds and nanoseconds): moves with a `write` to the file,
    /// with the first write through a shared mapping to a page since it was last written back, and
    /// with every rename or `chmod` of it; the kernel stamps it at its clock tick's granularity.
    pub changed: (i64, u64),
}

/// The file types the core distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (only from [`Fs::stat_nofollow`]).
    Symlink,
    /// Anything else (fifo, socket, device).
    Other,
}

/// Every filesystem call the core makes. Names are single path segments relative to `dir`.
pub trait Fs: Send + Sync + fmt::Debug {
    /// `openat(dir, name, flags, mode)`; counted as `create` when `flags` has `O_CREAT`.
    fn open(&self, dir: BorrowedFd<'_>, name: &str, flags: OFlags, mode: u32) -> io::Result<OwnedFd>;
    /// `mkdirat(dir, name, mode)`.
    fn mkdir(&self, dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<()>;
    /// `fallocate(fd, 0, 0, len)`.
    fn fallocate(&self, fd: BorrowedFd<'_>, len: u64) -> io::Result<()>;
    /// `ftruncate(fd, len)`, used only to size a file whose filesystem cannot reserve.
    fn truncate(&self, fd: BorrowedFd<'_>, len: u64) -> io::Result<()>;
    /// `pwrite(fd, buf, offset)`.
    fn pwrite(&self, fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<usize>;
    /// `pread(fd, buf, offset)`.
    fn pread(&self, fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// `fsync(fd)` of a file.
    fn fsync(&self, fd: BorrowedFd<'_>) -> io::Result<()>;
    /// `sync_file_range(fd, offset, len, SYNC_FILE_RANGE_WRITE)`: starts the writeback of a
    /// written range without waiting for it. A hint: the fsync that follows is what reports
    /// errors (this call leaves the file's error state for it).
    fn start_writeback(&self, fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()>;
    /// `fsync(fd)` of a directory.
    fn fsync_dir(&self, dir: BorrowedFd<'_>) -> io::Result<()>;
    /// `renameat(dir, from, dir, to)`.
    fn rename(&self, dir: BorrowedFd<'_>, from: &str, to: &str) -> io::Result<()>;
    /// `unlinkat(dir, name, 0)`; never follows a symlink.
    fn unlink(&self, dir: BorrowedFd<'_>, name: &str) -> io::Result<()>;
    /// `fstat(fd)`.
    fn fstat(&self, fd: BorrowedFd<'_>) -> io::Result<FileStat>;
    /// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
    fn stat_nofollow(&self, dir: BorrowedFd<'_>, name: &str) -> io::Result<FileStat>;
    /// `flock(fd, LOCK_EX)`, or `LOCK_EX|LOCK_NB` when `nonblocking`.
    fn lock_exclusive(&self, fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<()>;
    /// `flock(fd, LOCK_SH)`, blocking.
    fn lock_shared(&self, fd: BorrowedFd<'_>) -> io::Result<()>;
    /// `fchmod(fd, perm)`.
    fn fchmod(&self, fd: BorrowedFd<'_>, perm: u32) -> io::Result<()>;
    /// `copy_file_range` of up to `len` bytes; returns the bytes copied.
    fn copy_file_range(
        &self,
        src: BorrowedFd<'_>,
        src_offset: u64,
        dst: BorrowedFd<'_>,
        dst_offset: u64,
        len: usize,
    ) -> io::Result<usize>;
    /// `ioctl(FICLONERANGE)`: share `len` bytes of `src` at `src_offset` into `dst` at `dst_offset`.
    fn clone_range(
        &self,
        src: BorrowedFd<'_>,
        src_offset: u64,
        dst: BorrowedFd<'_>,
        dst_offset: u64,
        len: u64,
    ) -> io::Result<()>;
    /// The UTF-8 entry names of `dir` (others cannot be ours), without `.` and `..`.
    fn list(&self, dir: BorrowedFd<'_>) -> io::Result<Vec<String>>;
    /// Whether this process may not create files in `dir`: `faccessat(dir, ".", W_OK)` fails (as
    /// `access(2)` decides, with the real ids: permissions, a read-only mount, any other error), or
    /// `fstatvfs` reports a read-only mount.
    fn refuses_writes(&self, dir: BorrowedFd<'_>) -> io::Result<bool>;
    /// Called right before a file is memory-mapped (the mapping itself is memmap2's).
    fn map_gate(&self, path: &Path) -> io::Result<()>;
}

/// The production filesystem: rustix system calls behind the global fault table.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl Fs for RealFs {
    fn open(&self, dir: BorrowedFd<'_>, name: &str, flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
        global_gate(open_op(flags))?;
        Ok(rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(mode))?)
    }

    fn mkdir(&self, dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<()> {
        global_gate(Op::Mkdir)?;
        Ok(rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode))?)
    }

    fn fallocate(&self, fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
        global_gate(Op::Reserve)?;
        Ok(rustix::fs::fallocate(fd, FallocateFlags::empty(), 0, len)?)
    }

    fn truncate(&self, fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
        global_gate(Op::Reserve)?;
        Ok(rustix::fs::ftruncate(fd, len)?)
    }

    fn pwrite(&self, fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<usize> {
        global_gate(Op::Write)?;
        Ok(rustix::io::pwrite(fd, buf, offset)?)
    }

    fn pread(&self, fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        global_gate(Op::Read)?;
        Ok(rustix::io::pread(fd, buf, offset)?)
    }

    fn fsync(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        global_gate(Op::Fsync)?;
        Ok(rustix::fs::fsync(fd)?)
    }

    fn start_writeback(&self, fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
        global_gate(Op::Writeback)?;
        sync_file_range_write(fd, offset, len)
    }

    fn fsync_dir(&self, dir: BorrowedFd<'_>) -> io::Result<()> {
        global_gate(Op::DirFsync)?;
        Ok(rustix::fs::fsync(dir)?)
    }

    fn rename(&self, dir: BorrowedFd<'_>, from: &str, to: &str) -> io::Result<()> {
        global_gate(Op::Rename)?;
        Ok(rustix::fs::renameat(dir, from, dir, to)?)
    }

    fn unlink(&self, dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
        global_gate(Op::Unlink)?;
        Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?)
    }

    fn fstat(&self, fd: BorrowedFd<'_>) -> io::Result<FileStat> {
        global_gate(Op::Stat)?;
        Ok(file_stat(&rustix::fs::fstat(fd)?))
    }

    fn stat_nofollow(&self, dir: BorrowedFd<'_>, name: &str) -> io::Result<FileStat> {
        global_gate(Op::Stat)?;
        Ok(file_stat(&rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?))
    }

    fn lock_exclusive(&self, fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<()> {
        global_gate(Op::Lock)?;
        let operation = if nonblocking {
            FlockOperation::NonBlockingLockExclusive
        } else {
            FlockOperation::LockExclusive
        };
        Ok(rustix::fs::flock(fd, operation)?)
    }

    fn lock_shared(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        global_gate(Op::Lock)?;
        Ok(rustix::fs::flock(fd, FlockOperation::LockShared)?)
    }

    fn fchmod(&self, fd: BorrowedFd<'_>, perm: u32) -> io::Result<()> {
        global_gate(Op::Chmod)?;
        Ok(rustix::fs::fchmod(fd, Mode::from_raw_mode(perm))?)
    }

    fn copy_file_range(
        &self,
        src: BorrowedFd<'_>,
        src_offset: u64,
        dst: BorrowedFd<'_>,
        dst_offset: u64,
        len: usize,
    ) -> io::Result<usize> {
        global_gate(Op::Copy)?;
        let (mut src_offset, mut dst_offset) = (src_offset, dst_offset);
        Ok(rustix::fs::copy_file_range(
            src,
            Some(&mut src_offset),
            dst,
            Some(&mut dst_offset),
            len,
        )?)
    }

    fn clone_range(
        &self,
        src: BorrowedFd<'_>,
        src_offset: u64,
        dst: BorrowedFd<'_>,
        dst_offset: u64,
        len: u64,
    ) -> io::Result<()> {
        global_gate(Op::Copy)?;
        Ok(crate::copy::ficlonerange(src, src_offset, dst, dst_offset, len)?)
    }

    fn list(&self, dir: BorrowedFd<'_>) -> io::Result<Vec<String>> {
        global_gate(Op::List)?;
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(dir)? {
            let entry = entry?;
            if let Ok(name) = entry.file_name().to_str()
                && name != "."
                && name != ".."
            {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn map_gate(&self, _path: &Path) -> io::Result<()> {
        global_gate(Op::Map)
    }

    fn refuses_writes(&self, dir: BorrowedFd<'_>) -> io::Result<bool> {
        global_gate(Op::Stat)?;
        if rustix::fs::accessat(dir, ".", Access::WRITE_OK, AtFlags::empty()).is_err() {
            return Ok(true);
        }
        // A mount that cannot be queried is taken as writable: a write will say what is wrong.
        Ok(rustix::fs::fstatvfs(dir).is_ok_and(|info| info.f_flag.contains(StatVfsMountFlags::RDONLY)))
    }
}

/// `sync_file_range(fd, offset, len, SYNC_FILE_RANGE_WRITE)`.
#[allow(unsafe_code)]
fn sync_file_range_write(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is borrowed, so
    // it stays open for the duration of the call.
    let status = unsafe { libc::sync_file_range(fd.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The operation an `open` counts as: `create` when it may make the file.
fn open_op(flags: OFlags) -> Op {
    if flags.contains(OFlags::CREATE) {
        Op::Create
    } else {
        Op::Open
    }
}

fn file_stat(stat: &rustix::fs::Stat) -> FileStat {
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => FileKind::File,
        FileType::Directory => FileKind::Dir,
        FileType::Symlink => FileKind::Symlink,
        _ => FileKind::Other,
    };
    FileStat {
        len: u64::try_from(stat.st_size).unwrap_or(0),
        perm: stat.st_mode & 0o7777,
        kind,
        blksize: u64::try_from(stat.st_blksize).unwrap_or(0),
        identity: (stat.st_dev, stat.st_ino),
        changed: (stat.st_ctime, stat.st_ctime_nsec),
    }
}

// ---- process-global fault table (the Python testing seam) ----

#[derive(Debug, Clone, Copy)]
struct GlobalFault {
    op: Op,
    at_count: u64,
    errno: i32,
}

static ARMED: AtomicBool = AtomicBool::new(false);
static COUNTS: [AtomicU64; Op::ALL.len()] = [const { AtomicU64::new(0) }; Op::ALL.len()];
static FAULTS: Mutex<Vec<GlobalFault>> = Mutex::new(Vec::new());

fn global_gate(op: Op) -> io::Result<()> {
    let count = COUNTS[op.index()].fetch_add(1, Ordering::Relaxed) + 1;
    if !ARMED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut faults = FAULTS.lock().unwrap_or_else(PoisonError::into_inner);
    let hit = faults
        .iter()
        .position(|fault| fault.op == op && fault.at_count == count);
    let result = match hit {
        Some(index) => Err(io::Error::from_raw_os_error(faults.swap_remove(index).errno)),
        None => Ok(()),
    };
    if faults.is_empty() {
        ARMED.store(false, Ordering::Relaxed);
    }
    result
}

/// Makes the `nth` (1-based) future call of `op` made through [`RealFs`] fail with `errno`.
pub fn inject_fault(op: Op, nth: u64, errno: i32) {
    let mut faults = FAULTS.lock().unwrap_or_else(PoisonError::into_inner);
    let at_count = COUNTS[op.index()].load(Ordering::Relaxed).saturating_add(nth);
    faults.push(GlobalFault { op, at_count, errno });
    ARMED.store(true, Ordering::Relaxed);
}

/// Drops every pending global fault and resets the operation counters.
pub fn clear_faults() {
    let mut faults = FAULTS.lock().unwrap_or_else(PoisonError::into_inner);
    faults.clear();
    ARMED.store(false, Ordering::Relaxed);
    for counter in &COUNTS {
        counter.store(0, Ordering::Relaxed);
    }
}

/// How many calls of each operation went through [`RealFs`] since the last [`clear_faults`].
pub fn op_counts() -> Vec<(Op, u64)> {
    Op::ALL
        .into_iter()
        .map(|op| (op, COUNTS[op.index()].load(Ordering::Relaxed)))
        .collect()
}

#[cfg(feature = "testing")]
mod testing;
#[cfg(feature = "testing")]
pub use testing::{Call, CopyPath, CopyPathFs, FaultyFs, RecordingFs};
