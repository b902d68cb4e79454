//! Removing temps a crashed writer left behind: `<k>.npy.tmp`, `<k>.meta.json.tmp` and
//! `<k>.dat.tmp` directly in the directory.
//!
//! Only that grammar ([`crate::names::is_temp_name`]) is touched; the caller applies its full
//! key rule on top. The scan is not recursive. A symlink is unlinked, never followed.
//! Directories and other file types are left alone.
//!
//! Live writers are protected twice. A pair temp (`.npy.tmp`, `.meta.json.tmp`) is removed only
//! while the sweep holds its key's writer lock ([`crate::keylock`]), taken without waiting: a
//! locked key has a live writer, in this process or another, and its temps are skipped. A temp
//! that is still open keeps its own `flock(LOCK_EX)`; each regular temp is locked with
//! `LOCK_EX|LOCK_NB` before it is unlinked, and skipped if that fails.

use std::os::fd::AsFd;

use rustix::fs::OFlags;
use rustix::io::Errno;

use crate::dir::CacheDir;
use crate::error::{Error, Op, Result, is_gone};
use crate::fs::FileKind;
use crate::names::{is_temp_name, pair_temp_key};

/// The result of a sweep.
#[derive(Debug, Default)]
pub struct SweepReport {
    /// Names removed.
    pub removed: Vec<String>,
    /// Names that could not be removed, with the error.
    pub failed: Vec<(String, Error)>,
}

enum Outcome {
    Removed,
    Skipped,
}

impl CacheDir {
    /// Removes stale temps of ours from this directory (non-recursive). Temps of a key whose
    /// writer lock is held, and temps still locked by their writer, are left alone.
    ///
    /// # Errors
    /// [`Error::Io`] with [`Op::List`] when the directory cannot be listed; failures on single
    /// names (including a key lock that cannot be tried) are reported in
    /// [`SweepReport::failed`] instead.
    pub fn sweep_temps(&self) -> Result<SweepReport> {
        self.sweep_candidates(None, false)
    }

    /// Like [`CacheDir::sweep_temps`], but only `names` are candidates (each still has to match
    /// our temp grammar), so a caller with a stricter key rule never loses a name it would keep.
    /// The directory is not listed.
    ///
    /// # Errors
    /// As [`CacheDir::sweep_temps`].
    pub fn sweep_named_temps(&self, names: &[String]) -> Result<SweepReport> {
        self.sweep_candidates(Some(names), false)
    }

    /// What [`CacheDir::sweep_named_temps`] would remove, found the same way (locks included)
    /// but removing nothing: [`SweepReport::removed`] lists the names it would unlink.
    ///
    /// # Errors
    /// As [`CacheDir::sweep_temps`].
    pub fn sweepable_temps(&self, names: &[String]) -> Result<SweepReport> {
        self.sweep_candidates(Some(names), true)
    }

    fn sweep_candidates(&self, only: Option<&[String]>, dry_run: bool) -> Result<SweepReport> {
        let names = match only {
            Some(names) => names.to_vec(),
            None => self
                .fs()
                .list(self.fd())
                .map_err(|err| Error::io(Op::List, self.path(), err))?,
        };
        let mut report = SweepReport::default();
        for name in names.into_iter().filter(|name| is_temp_name(name)) {
            match self.sweep_one(&name, dry_run) {
                Ok(Outcome::Removed) => report.removed.push(name),
                Ok(Outcome::Skipped) => {}
                Err(err) => report.failed.push((name, err)),
            }
        }
        Ok(report)
    }

    fn sweep_one(&self, name: &str, dry_run: bool) -> Result<Outcome> {
        // Held until the unlink, so no writer of the key starts meanwhile.
        let _writer = match pair_temp_key(name) {
            Some(key) => match self.try_lock_key(key)? {
                Some(lock) => Some(lock),
                None => return Ok(Outcome::Skipped),
            },
            None => None,
        };
        let fs = self.fs();
        let path = self.path_of(name);
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
        if dry_run {
            return Ok(Outcome::Removed);
        }
        match fs.unlink(self.fd(), name) {
            Ok(()) => Ok(Outcome::Removed),
            Err(err) if is_gone(&err) => Ok(Outcome::Skipped),
            Err(err) => Err(Error::io(Op::Unlink, path, err)),
        }
    }
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use crate::atomic::PendingFile;
    use crate::dir::open_temp_dir;

    fn sorted(mut names: Vec<String>) -> Vec<String> {
        names.sort();
        names
    }

    #[test]
    fn sweep_removes_our_temps_and_leaves_everything_else() {
        let (tmp, dir) = open_temp_dir();
        for name in [
            "a.npy.tmp",
            "a.meta.json.tmp",
            "b.dat.tmp",
            "a.npy",
            "notes.tmp",
            ".npy.tmp",
        ] {
            fs::write(tmp.path().join(name), b"x").unwrap();
        }
        fs::create_dir(tmp.path().join("d.npy.tmp")).unwrap();

        let report = dir.sweep_temps().unwrap();

        assert_eq!(
            sorted(report.removed),
            ["a.meta.json.tmp", "a.npy.tmp", "b.dat.tmp"].map(String::from)
        );
        assert!(report.failed.is_empty());
        let left = sorted(dir.fs().list(dir.fd()).unwrap());
        let lock_file = crate::keylock::LOCK_FILE_NAME;
        assert_eq!(
            left,
            [lock_file, ".npy.tmp", "a.npy", "d.npy.tmp", "notes.tmp"].map(String::from)
        );
    }

    #[test]
    fn sweep_unlinks_a_temp_named_symlink_without_touching_its_target() {
        let (tmp, dir) = open_temp_dir();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("precious");
        fs::write(&target, b"keep").unwrap();
        symlink(&target, tmp.path().join("k.npy.tmp")).unwrap();

        let report = dir.sweep_temps().unwrap();

        assert_eq!(report.removed, ["k.npy.tmp"]);
        assert!(fs::symlink_metadata(tmp.path().join("k.npy.tmp")).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"keep");
    }

    #[test]
    fn sweep_skips_a_temp_a_live_writer_holds() {
        let (tmp, dir) = open_temp_dir();
        let pending = PendingFile::create(&dir, "k.npy").unwrap();

        let report = dir.sweep_temps().unwrap();

        assert!(report.removed.is_empty(), "{:?}", report.removed);
        assert!(report.failed.is_empty());
        assert!(tmp.path().join("k.npy.tmp").exists());
        drop(pending);
    }

    #[test]
    fn named_sweep_only_considers_the_given_names_that_match_the_grammar() {
        let (tmp, dir) = open_temp_dir();
        for name in ["a.npy.tmp", "b.npy.tmp", "c.npy"] {
            fs::write(tmp.path().join(name), b"x").unwrap();
        }

        let names = ["a.npy.tmp", "c.npy", "missing.dat.tmp"].map(String::from);
        let report = dir.sweep_named_temps(&names).unwrap();

        assert_eq!(report.removed, ["a.npy.tmp"]);
        assert!(report.failed.is_empty());
        assert!(tmp.path().join("b.npy.tmp").exists());
        assert!(tmp.path().join("c.npy").exists());
    }

    #[test]
    fn sweep_leaves_the_pair_temps_of_a_locked_key_and_removes_the_others() {
        let (tmp, dir) = open_temp_dir();
        for name in ["k.npy.tmp", "k.meta.json.tmp", "other.npy.tmp"] {
            fs::write(tmp.path().join(name), b"x").unwrap();
        }
        let lock = dir.lock_key("k").unwrap();

        let report = dir.sweep_temps().unwrap();

        assert_eq!(report.removed, ["other.npy.tmp"]);
        assert!(tmp.path().join("k.npy.tmp").exists());
        assert!(tmp.path().join("k.meta.json.tmp").exists());
        drop(lock);
        assert_eq!(
            sorted(dir.sweep_temps().unwrap().removed),
            ["k.meta.json.tmp", "k.npy.tmp"].map(String::from)
        );
    }

    #[test]
    fn a_dry_run_names_what_the_sweep_would_remove_and_removes_nothing() {
        let (tmp, dir) = open_temp_dir();
        for name in ["a.npy.tmp", "b.dat.tmp"] {
            fs::write(tmp.path().join(name), b"x").unwrap();
        }
        let held = PendingFile::create(&dir, "c.npy").unwrap();
        let names = ["a.npy.tmp", "b.dat.tmp", "c.npy.tmp"].map(String::from);

        let report = dir.sweepable_temps(&names).unwrap();

        assert_eq!(sorted(report.removed), ["a.npy.tmp", "b.dat.tmp"].map(String::from));
        for name in names {
            assert!(tmp.path().join(&name).exists(), "{name}");
        }
        drop(held);
    }
}
