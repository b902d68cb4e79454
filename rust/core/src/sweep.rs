//! Removing temps a crashed writer left behind: `<k>.npy.tmp`, `<k>.meta.json.tmp` and
//! `<k>.dat.tmp` directly in the directory.
//!
//! Only that grammar is touched (a non-empty stem without `/` or NUL; the caller applies its
//! full key rule on top). The scan is not recursive. A symlink is unlinked, never followed.
//! Directories and other file types are left alone.
//!
//! Live writers are protected twice. A group commit closes each temp once it is fsynced, so
//! it holds the directory's shared [`crate::dir::WriterLock`] instead; the sweep first takes
//! the exclusive lock on a fresh descriptor of the directory without waiting and, if any writer
//! holds it, sweeps nothing at all. A temp that is still open keeps its own `flock(LOCK_EX)`;
//! each regular temp is locked with `LOCK_EX|LOCK_NB` before it is unlinked, and skipped if
//! that fails.

use std::os::fd::AsFd;

use rustix::fs::OFlags;
use rustix::io::Errno;

use crate::dir::CacheDir;
use crate::error::{Error, Op, Result};
use crate::fs::FileKind;

/// The temp suffixes we sweep.
pub const SWEPT_SUFFIXES: [&str; 3] = [".npy.tmp", ".meta.json.tmp", ".dat.tmp"];

/// The result of a sweep.
#[derive(Debug, Default)]
pub struct SweepReport {
    /// Names removed.
    pub removed: Vec<String>,
    /// Names that could not be removed, with the error.
    pub failed: Vec<(String, Error)>,
}

/// Whether `name` is one of our temp names (`<stem><suffix>` with a non-empty stem).
pub fn is_swept_name(name: &str) -> bool {
    !name.contains('/')
        && !name.contains('\0')
        && SWEPT_SUFFIXES
            .iter()
            .any(|suffix| name.strip_suffix(suffix).is_some_and(|stem| !stem.is_empty()))
}

enum Outcome {
    Removed,
    Skipped,
}

impl CacheDir {
    /// Removes stale temps of ours from this directory (non-recursive). While a writer holds
    /// the directory's [`crate::dir::WriterLock`], nothing is removed and the report is empty.
    ///
    /// # Errors
    /// [`Error::Io`] with [`Op::Open`] or [`Op::Lock`] when the directory lock cannot be tried
    /// (nothing is removed then), or [`Op::List`] when the directory cannot be listed; failures
    /// on single names are reported in [`SweepReport::failed`] instead.
    pub fn sweep_temps(&self) -> Result<SweepReport> {
        self.sweep_candidates(None)
    }

    /// Like [`CacheDir::sweep_temps`], but only `names` are candidates (each still has to match
    /// our temp grammar), so a caller with a stricter key rule never loses a name it would keep.
    /// The directory is not listed.
    ///
    /// # Errors
    /// As [`CacheDir::sweep_temps`].
    pub fn sweep_named_temps(&self, names: &[String]) -> Result<SweepReport> {
        self.sweep_candidates(Some(names))
    }

    fn sweep_candidates(&self, only: Option<&[String]>) -> Result<SweepReport> {
        // Held until every name is handled, so no group commit starts closing temps meanwhile.
        let Some(_exclusive) = self.try_sweep_lock()? else {
            return Ok(SweepReport::default());
        };
        let names = match only {
            Some(names) => names.to_vec(),
            None => self
                .fs()
                .list(self.fd())
                .map_err(|err| Error::io(Op::List, self.path(), err))?,
        };
        let mut report = SweepReport::default();
        for name in names.into_iter().filter(|name| is_swept_name(name)) {
            match self.sweep_one(&name) {
                Ok(Outcome::Removed) => report.removed.push(name),
                Ok(Outcome::Skipped) => {}
                Err(err) => report.failed.push((name, err)),
            }
        }
        Ok(report)
    }

    fn sweep_one(&self, name: &str) -> Result<Outcome> {
        let fs = self.fs();
        let path = self.path_of(name);
        let is_gone = |err: &std::io::Error| err.raw_os_error() == Some(Errno::NOENT.raw_os_error());
        let stat = match fs.stat_nofollow(self.fd(), name) {
            Ok(stat) => stat,
            Err(err) if is_gone(&err) => return Ok(Outcome::Skipped),
            Err(err) => return Err(Error::io(Op::Stat, path, err)),
        };
        // Held until the unlink below, so a writer cannot take the temp over in between.
        let _lock = match stat.kind {
            FileKind::Symlink => None,
            FileKind::File => {
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
                let fd = match fs.open(self.fd(), name, flags, 0) {
                    Ok(fd) => fd,
                    Err(err) if is_gone(&err) => return Ok(Outcome::Skipped),
                    Err(err) => return Err(Error::io(Op::Open, path, err)),
                };
                match fs.lock_exclusive(fd.as_fd(), true) {
                    Ok(()) => Some(fd),
                    Err(err) if err.raw_os_error() == Some(Errno::WOULDBLOCK.raw_os_error()) => {
                        return Ok(Outcome::Skipped);
                    }
                    Err(err) => return Err(Error::io(Op::Lock, path, err)),
                }
            }
            FileKind::Dir | FileKind::Other => return Ok(Outcome::Skipped),
        };
        match fs.unlink(self.fd(), name) {
            Ok(()) => Ok(Outcome::Removed),
            Err(err) if is_gone(&err) => Ok(Outcome::Skipped),
            Err(err) => Err(Error::io(Op::Unlink, path, err)),
        }
    }
}
