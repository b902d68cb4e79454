//! Removing temps a crashed writer left behind: `<k>.npy.tmp`, `<k>.meta.json.tmp` and
//! `<k>.dat.tmp` directly in the directory.
//!
//! Only that grammar is touched (a non-empty stem without `/` or NUL; the caller applies its
//! full key rule on top). The scan is not recursive. A symlink is unlinked, never followed.
//! A regular temp is first locked with `LOCK_EX|LOCK_NB`: a live writer holds that lock, and
//! its temp is skipped. Directories and other file types are left alone.

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
    /// Removes stale temps of ours from this directory (non-recursive).
    ///
    /// # Errors
    /// [`Error::Io`] with [`Op::List`] when the directory cannot be listed; failures on single
    /// names are reported in [`SweepReport::failed`] instead.
    pub fn sweep_temps(&self) -> Result<SweepReport> {
        let names = self
            .fs()
            .list(self.fd())
            .map_err(|err| Error::io(Op::List, self.path(), err))?;
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
