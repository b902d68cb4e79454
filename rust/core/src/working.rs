//! Removing working files no entry needs any more: a key's `<key>.dat` whose holders are gone
//! and whose bytes its committed pair holds too.
//!
//! A `.dat` is an entry's memory-mapped data. While an entry on it lives, in any process, the
//! entry may map it and write through the mapping, and only the `.dat` sees those writes until
//! the next commit; its process holds the key's holder byte ([`crate::keylock`]). Once every
//! holder is gone, the `.dat` is still the only copy of its data unless the key's committed
//! `<key>.npy` holds exactly the same payload bytes: a pickled entry may still name the file.
//! So a `.dat` is removed only when all of these hold, and is otherwise left alone:
//!
//! - it is a regular file (never a link), and the key has a committed pair beside it: a
//!   regular `<key>.npy` and a regular `<key>.meta.json`;
//! - no process holds the key's holder byte and no writer holds its writer byte;
//! - the `.npy`'s payload (everything after its header) has the `.dat`'s length and bytes,
//!   compared byte for byte. A checksum recorded in the sidecar is not trusted for this: it
//!   would also match a `.dat` that still holds a payload whose `.npy` later rotted or was
//!   replaced beside a stale sidecar, and the `.dat` is then the only intact copy.
//!
//! The comparison reads both files (GIL-free callers, memory bounded by two read windows, the
//! page cache left as found) without holding any lock, so no holder ever waits for it. The
//! locks are then taken again without waiting, and the `.dat` and the `.npy` must still be the
//! files compared, unchanged since (device, inode, size and status-change time): a holder that
//! came and went meanwhile, or a commit, leaves the `.dat` for the next collection. The locks are
//! the guard that counts (every process writing a `.dat`, through a mapping too, holds its key);
//! the status-change time, which a write through a mapping moves only now and then, is a second one. The unlink
//! happens while both locks are held, so no entry can announce itself between the last check
//! and the unlink.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::OFlags;
use rustix::io::Errno;

use crate::copy::Between;
use crate::dir::CacheDir;
use crate::error::{Error, Op, Result, is_gone};
use crate::fs::{FileKind, FileStat};
use crate::keylock::{HolderProbe, KeyLock};
use crate::names::{MEMMAP_SUFFIX, PairNames};
use crate::sequential::{self, CacheUse, Source};

/// What became of a key's working file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkingFileFate {
    /// Removed (in a dry run: would have been).
    Removed,
    /// An entry in a live process (this one included) holds it.
    Held,
    /// A writer holds the key.
    Writing,
    /// No committed pair (two regular files) beside it: it may be the only copy of its data.
    Unpaired,
    /// The pair's payload is not the same bytes (or its header is unreadable): it may be the
    /// only copy of its data.
    Differs,
    /// It or its `.npy` changed while it was compared; the next collection decides.
    Changed,
    /// Not a regular file (a link, a directory, ...).
    NotRegular,
    /// There is no such file (any more).
    Gone,
}

/// What a collection decided, per key, in the order asked.
#[derive(Debug, Default)]
pub struct WorkingFilesReport {
    /// The keys whose `.dat` was looked at, with what became of it.
    pub fates: Vec<(String, WorkingFileFate)>,
    /// Keys whose `.dat` could not be decided or removed, with the error.
    pub failed: Vec<(String, Error)>,
}

/// The writer lock and the holder probe of one key, both taken without waiting.
struct KeyQuiet {
    _writer: KeyLock,
    _probe: HolderProbe,
}

/// A file opened for the comparison, and what it was then.
struct Opened {
    fd: OwnedFd,
    stat: FileStat,
}

impl CacheDir {
    /// Removes the working file `<key>.dat` of each of `keys` that no live entry holds and
    /// whose bytes its committed pair holds too (see the module docs); with `dry_run`, decides
    /// the same way, locks included, but removes nothing. `between` runs about every 64 MiB
    /// compared and may stop the collection (the key being compared is then left alone).
    ///
    /// # Errors
    /// Whatever `between` returns. Failures on single keys (an invalid name, a lock file that
    /// cannot be opened, an I/O error) are reported in [`WorkingFilesReport::failed`].
    pub fn collect_working_files(
        &self,
        keys: &[String],
        dry_run: bool,
        between: Between<'_>,
    ) -> Result<WorkingFilesReport> {
        let mut report = WorkingFilesReport::default();
        for key in keys {
            let mut stopped = false;
            let outcome = self.collect_working_file(key, dry_run, &mut |moved| {
                let verdict = between(moved);
                stopped = verdict.is_err();
                verdict
            });
            match outcome {
                Ok(fate) => report.fates.push((key.clone(), fate)),
                Err(err) if stopped => return Err(err),
                Err(err) => report.failed.push((key.clone(), err)),
            }
        }
        Ok(report)
    }

    fn collect_working_file(&self, key: &str, dry_run: bool, between: Between<'_>) -> Result<WorkingFileFate> {
        let PairNames { npy, meta } = PairNames::of(key)?;
        let dat = format!("{key}{MEMMAP_SUFFIX}");
        match self.kind_of(&dat)? {
            None => return Ok(WorkingFileFate::Gone),
            Some(FileKind::File) => {}
            Some(_) => return Ok(WorkingFileFate::NotRegular),
        }
        if self.kind_of(&npy)? != Some(FileKind::File) || self.kind_of(&meta)? != Some(FileKind::File) {
            return Ok(WorkingFileFate::Unpaired);
        }
        // A first look, released at once: a held key is not worth reading.
        if let Err(fate) = self.quiet_key(key)? {
            return Ok(fate);
        }
        let Some(dat_file) = self.open_unfollowed(&dat)? else {
            return Ok(WorkingFileFate::Changed);
        };
        let Some(npy_file) = self.open_unfollowed(&npy)? else {
            return Ok(WorkingFileFate::Changed);
        };
        if !self.same_payload(&dat, &dat_file, &npy, &npy_file, between)? {
            return Ok(WorkingFileFate::Differs);
        }
        let _quiet = match self.quiet_key(key)? {
            Ok(quiet) => quiet,
            Err(fate) => return Ok(fate),
        };
        let unchanged = self.still(&dat, &dat_file.stat)?
            && self.still(&npy, &npy_file.stat)?
            && self.kind_of(&meta)? == Some(FileKind::File);
        if !unchanged {
            return Ok(WorkingFileFate::Changed);
        }
        if dry_run {
            return Ok(WorkingFileFate::Removed);
        }
        match self.fs().unlink(self.fd(), &dat) {
            Ok(()) => Ok(WorkingFileFate::Removed),
            Err(err) if is_gone(&err) => Ok(WorkingFileFate::Gone),
            Err(err) => Err(Error::io(Op::Unlink, self.path_of(&dat), err)),
        }
    }

    /// Takes `key`'s writer lock and holder probe without waiting, or says which is busy.
    fn quiet_key(&self, key: &str) -> Result<std::result::Result<KeyQuiet, WorkingFileFate>> {
        let Some(writer) = self.try_lock_key(key)? else {
            return Ok(Err(WorkingFileFate::Writing));
        };
        let Some(probe) = self.probe_key_holders(key)? else {
            return Ok(Err(WorkingFileFate::Held));
        };
        Ok(Ok(KeyQuiet {
            _writer: writer,
            _probe: probe,
        }))
    }

    /// What `name` is (not following a link), `None` if there is none.
    fn stat_of(&self, name: &str) -> Result<Option<FileStat>> {
        match self.fs().stat_nofollow(self.fd(), name) {
            Ok(stat) => Ok(Some(stat)),
            Err(err) if is_gone(&err) => Ok(None),
            Err(err) => Err(Error::io(Op::Stat, self.path_of(name), err)),
        }
    }

    /// The type of `name` (not following a link), `None` if there is none.
    fn kind_of(&self, name: &str) -> Result<Option<FileKind>> {
        Ok(self.stat_of(name)?.map(|stat| stat.kind))
    }

    /// Opens the regular file `name` for reading without following a link; `None` if it is
    /// gone or no longer a regular file.
    fn open_unfollowed(&self, name: &str) -> Result<Option<Opened>> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match self.fs().open(self.fd(), name, flags, 0) {
            Ok(fd) => fd,
            Err(err) if is_gone(&err) || err.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => return Ok(None),
            Err(err) => return Err(Error::io(Op::Open, self.path_of(name), err)),
        };
        let stat = self
            .fs()
            .fstat(fd.as_fd())
            .map_err(|err| Error::io(Op::Stat, self.path_of(name), err))?;
        Ok((stat.kind == FileKind::File).then_some(Opened { fd, stat }))
    }

    /// Whether the `.dat` holds exactly the `.npy`'s payload: the same length, the same bytes.
    fn same_payload(
        &self,
        dat: &str,
        dat_file: &Opened,
        npy: &str,
        npy_file: &Opened,
        between: Between<'_>,
    ) -> Result<bool> {
        let (dat_path, npy_path) = (self.path_of(dat), self.path_of(npy));
        // The length the file was opened with: the unchanged-check at the end compares with it.
        let header = match self.header_within(npy_file.fd.as_fd(), &npy_path, npy_file.stat.len) {
            Ok(header) => header,
            Err(Error::InvalidHeader { .. }) => return Ok(false),
            Err(err) => return Err(err),
        };
        let payload_len = header.file_len.saturating_sub(header.data_offset);
        if payload_len != dat_file.stat.len {
            return Ok(false);
        }
        let working = Source {
            fd: dat_file.fd.as_fd(),
            path: &dat_path,
            offset: 0,
            len: payload_len,
        };
        let stored = Source {
            fd: npy_file.fd.as_fd(),
            path: &npy_path,
            offset: header.data_offset,
            len: payload_len,
        };
        match sequential::ranges_equal(self.fs(), working, stored, CacheUse::LeaveAsFound, between) {
            // Shrunk while compared: not the bytes that were there.
            Err(Error::SizeMismatch { .. }) => Ok(false),
            other => other,
        }
    }

    /// Whether `name` is still the file `before` described, unchanged.
    fn still(&self, name: &str, before: &FileStat) -> Result<bool> {
        Ok(self.stat_of(name)?.is_some_and(|now| {
            now.kind == FileKind::File
                && now.identity == before.identity
                && now.len == before.len
                && now.changed == before.changed
        }))
    }
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    use super::*;
    use crate::dir::open_temp_dir;
    use crate::npy::encode_header;

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|index| (index % 241) as u8).collect()
    }

    /// Commits `bytes` as the pair of `key` (one-dimensional `u1`) by plain writes.
    fn write_pair(root: &Path, key: &str, bytes: &[u8]) {
        let len = bytes.len() as u64;
        let mut npy = encode_header("'|u1'", false, &[len], len).unwrap();
        npy.extend_from_slice(bytes);
        fs::write(root.join(format!("{key}.npy")), npy).unwrap();
        fs::write(root.join(format!("{key}.meta.json")), b"{\"schema_version\": 1}").unwrap();
    }

    fn collect(dir: &CacheDir, keys: &[&str], dry_run: bool) -> WorkingFilesReport {
        let keys: Vec<String> = keys.iter().map(|&key| key.to_owned()).collect();
        dir.collect_working_files(&keys, dry_run, &mut |_| Ok(())).unwrap()
    }

    fn fate_of(dir: &CacheDir, key: &str) -> WorkingFileFate {
        let report = collect(dir, &[key], false);
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        report.fates[0].1
    }

    #[test]
    fn a_dat_identical_to_its_committed_pair_with_no_holder_is_removed_and_the_pair_kept() {
        let (tmp, dir) = open_temp_dir();
        let bytes = payload(3 * 4096 + 5);
        write_pair(tmp.path(), "k", &bytes);
        fs::write(tmp.path().join("k.dat"), &bytes).unwrap();

        let fate = fate_of(&dir, "k");

        assert_eq!(fate, WorkingFileFate::Removed);
        assert!(!tmp.path().join("k.dat").exists());
        assert!(tmp.path().join("k.npy").exists() && tmp.path().join("k.meta.json").exists());
    }

    #[test]
    fn a_dat_that_differs_from_its_pair_in_one_byte_or_in_length_is_kept() {
        let (tmp, dir) = open_temp_dir();
        let bytes = payload(10_000);
        write_pair(tmp.path(), "flipped", &bytes);
        write_pair(tmp.path(), "longer", &bytes);
        let mut flipped = bytes.clone();
        flipped[9_999] ^= 1;
        fs::write(tmp.path().join("flipped.dat"), &flipped).unwrap();
        fs::write(tmp.path().join("longer.dat"), [bytes.as_slice(), b"x"].concat()).unwrap();

        let report = collect(&dir, &["flipped", "longer"], false);

        let expected = [
            ("flipped".to_owned(), WorkingFileFate::Differs),
            ("longer".to_owned(), WorkingFileFate::Differs),
        ];
        assert_eq!(report.fates, expected);
        assert!(tmp.path().join("flipped.dat").exists() && tmp.path().join("longer.dat").exists());
    }

    #[test]
    fn a_dat_without_a_whole_pair_is_kept() {
        let (tmp, dir) = open_temp_dir();
        let bytes = payload(100);
        fs::write(tmp.path().join("alone.dat"), &bytes).unwrap();
        write_pair(tmp.path(), "half", &bytes);
        fs::remove_file(tmp.path().join("half.meta.json")).unwrap();
        fs::write(tmp.path().join("half.dat"), &bytes).unwrap();

        let report = collect(&dir, &["alone", "half"], false);

        let expected = [
            ("alone".to_owned(), WorkingFileFate::Unpaired),
            ("half".to_owned(), WorkingFileFate::Unpaired),
        ];
        assert_eq!(report.fates, expected);
        assert!(tmp.path().join("alone.dat").exists() && tmp.path().join("half.dat").exists());
    }

    #[test]
    fn a_held_key_keeps_its_dat_until_its_holder_goes() {
        let (tmp, dir) = open_temp_dir();
        let bytes = payload(100);
        write_pair(tmp.path(), "k", &bytes);
        fs::write(tmp.path().join("k.dat"), &bytes).unwrap();
        let holder = dir.hold_key("k").unwrap().unwrap();

        let while_held = fate_of(&dir, "k");
        drop(holder);
        let after = fate_of(&dir, "k");

        assert_eq!((while_held, after), (WorkingFileFate::Held, WorkingFileFate::Removed));
    }

    #[test]
    fn a_key_being_written_keeps_its_dat() {
        let (tmp, dir) = open_temp_dir();
        let bytes = payload(100);
        write_pair(tmp.path(), "k", &bytes);
        fs::write(tmp.path().join("k.dat"), &bytes).unwrap();
        let writer = dir.lock_key("k").unwrap();

        let fate = fate_of(&dir, "k");

        assert_eq!(fate, WorkingFileFate::Writing);
        assert!(tmp.path().join("k.dat").exists());
        drop(writer);
    }

    #[test]
    fn a_dry_run_names_what_would_go_and_removes_nothing() {
        let (tmp, dir) = open_temp_dir();
        let bytes = payload(100);
        write_pair(tmp.path(), "k", &bytes);
        fs::write(tmp.path().join("k.dat"), &bytes).unwrap();

        let report = collect(&dir, &["k"], true);

        assert_eq!(report.fates, [("k".to_owned(), WorkingFileFate::Removed)]);
        assert!(tmp.path().join("k.dat").exists());
    }

    #[test]
    fn a_linked_dat_and_a_linked_payload_are_left_alone() {
        let (tmp, dir) = open_temp_dir();
        let outside = tempfile::tempdir().unwrap();
        let bytes = payload(100);
        fs::write(outside.path().join("target"), &bytes).unwrap();
        write_pair(tmp.path(), "linked", &bytes);
        symlink(outside.path().join("target"), tmp.path().join("linked.dat")).unwrap();
        write_pair(outside.path(), "pair", &bytes);
        symlink(outside.path().join("pair.npy"), tmp.path().join("via.npy")).unwrap();
        fs::write(tmp.path().join("via.meta.json"), b"{}").unwrap();
        fs::write(tmp.path().join("via.dat"), &bytes).unwrap();

        let report = collect(&dir, &["linked", "via", "missing"], false);

        let expected = [
            ("linked".to_owned(), WorkingFileFate::NotRegular),
            ("via".to_owned(), WorkingFileFate::Unpaired),
            ("missing".to_owned(), WorkingFileFate::Gone),
        ];
        assert_eq!(report.fates, expected);
        assert_eq!(fs::read(outside.path().join("target")).unwrap(), bytes);
        assert!(tmp.path().join("via.dat").exists());
    }

    #[test]
    fn a_pair_with_an_unreadable_header_keeps_the_dat() {
        let (tmp, dir) = open_temp_dir();
        let bytes = payload(100);
        fs::write(tmp.path().join("k.npy"), &bytes).unwrap();
        fs::write(tmp.path().join("k.meta.json"), b"{}").unwrap();
        fs::write(tmp.path().join("k.dat"), &bytes).unwrap();

        assert_eq!(fate_of(&dir, "k"), WorkingFileFate::Differs);
    }

    #[test]
    fn an_invalid_key_fails_alone_and_a_stopping_callback_stops_the_collection() {
        let (tmp, dir) = open_temp_dir();
        let bytes = payload(crate::copy::PIECE_CAP + 4096);
        write_pair(tmp.path(), "k", &bytes);
        fs::write(tmp.path().join("k.dat"), &bytes).unwrap();

        let keys = ["../k".to_owned(), "k".to_owned()];
        let err = dir
            .collect_working_files(&keys, false, &mut |_| Err(Error::Interrupted))
            .unwrap_err();
        let report = collect(&dir, &["../k"], false);

        assert!(matches!(err, Error::Interrupted), "{err}");
        assert!(
            tmp.path().join("k.dat").exists(),
            "a stopped comparison removes nothing"
        );
        assert!(
            matches!(report.failed[..], [(_, Error::InvalidName { .. })]),
            "{:?}",
            report.failed
        );
    }

    #[test]
    fn a_dat_replaced_or_announced_while_it_is_compared_is_left_for_the_next_collection() {
        let (tmp, dir) = open_temp_dir();
        let bytes = payload(crate::copy::PIECE_CAP + 4096);
        for key in ["replaced", "announced"] {
            write_pair(tmp.path(), key, &bytes);
            fs::write(tmp.path().join(format!("{key}.dat")), &bytes).unwrap();
        }
        let root = tmp.path().to_path_buf();
        let mut replace = |_| {
            fs::write(root.join("new.dat"), &bytes).unwrap();
            fs::rename(root.join("new.dat"), root.join("replaced.dat")).unwrap();
            Ok(())
        };
        let replaced = dir
            .collect_working_files(&["replaced".to_owned()], false, &mut replace)
            .unwrap();
        let mut holder = None;
        let mut announce = |_| {
            holder = dir.hold_key("announced").unwrap();
            Ok(())
        };
        let announced = dir
            .collect_working_files(&["announced".to_owned()], false, &mut announce)
            .unwrap();

        assert_eq!(replaced.fates, [("replaced".to_owned(), WorkingFileFate::Changed)]);
        assert_eq!(announced.fates, [("announced".to_owned(), WorkingFileFate::Held)]);
        assert!(holder.is_some());
        assert!(root.join("replaced.dat").exists() && root.join("announced.dat").exists());
    }

    #[test]
    fn a_payload_that_grows_in_place_while_it_is_compared_leaves_the_dat() {
        let (tmp, dir) = open_temp_dir();
        let bytes = payload(crate::copy::PIECE_CAP + 4096);
        write_pair(tmp.path(), "k", &bytes);
        fs::write(tmp.path().join("k.dat"), &bytes).unwrap();
        let npy = tmp.path().join("k.npy");
        let mut grow = |_| {
            let mut file = fs::OpenOptions::new().append(true).open(&npy).unwrap();
            std::io::Write::write_all(&mut file, b"more").unwrap();
            Ok(())
        };

        let report = dir.collect_working_files(&["k".to_owned()], false, &mut grow).unwrap();

        assert_eq!(report.fates, [("k".to_owned(), WorkingFileFate::Changed)]);
        assert!(tmp.path().join("k.dat").exists());
    }
}
