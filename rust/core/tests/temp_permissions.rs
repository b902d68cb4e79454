//! A temp is never readable by anyone who cannot read the file it replaces, from its first
//! system call on: its permission bits right after `open(O_CREAT)` (as the recording seam
//! reports them from `fstat`) lie within the final file's, under any umask.
//!
//! The umask belongs to the whole process, so this binary holds a single test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use lazy_disk_cache_core::fs::{Fs, RecordingFs};
use lazy_disk_cache_core::{ArraySpec, CacheDir, ChunkBudget, CommitBatch};
use rustix::fs::Mode;

fn plant(root: &Path, name: &str, perm: u32) {
    let path = root.join(name);
    fs::write(&path, b"old").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(perm)).unwrap();
}

fn perm_of(root: &Path, name: &str) -> u32 {
    fs::metadata(root.join(name)).unwrap().permissions().mode() & 0o7777
}

/// Checks every temp the recording saw created against `final_perm`.
fn assert_created_within(recording: &RecordingFs, temps: &[&str], final_perm: u32, at: &str) {
    let created = recording.created_perms();
    for temp in temps {
        let perm = created.iter().find(|(name, _)| name == temp).map_or_else(
            || panic!("{at}: {temp} was never created: {created:?}"),
            |(_, perm)| *perm,
        );
        assert_eq!(
            perm & !final_perm,
            0,
            "{at}: {temp} was created {perm:o}, wider than the final {final_perm:o}"
        );
    }
}

fn dat_write(root: &Path, final_perm: u32, at: &str) {
    plant(root, "x.dat", final_perm);
    let recording = Arc::new(RecordingFs::new());
    let dir = CacheDir::open_with(root, false, recording.clone() as Arc<dyn Fs>).unwrap();

    let mut writer = dir.begin_write("x.dat", 4, ChunkBudget::new(4), false).unwrap();
    writer.write_block(b"new!", &mut |_| Ok(())).unwrap();
    dir.finish_write(writer).unwrap();

    assert_created_within(&recording, &["x.dat.tmp"], final_perm, at);
    assert_eq!(perm_of(root, "x.dat"), final_perm, "{at}: the final mode");
}

fn store_commit(root: &Path, final_perm: u32, at: &str) {
    plant(root, "k.npy", final_perm);
    plant(root, "k.meta.json", final_perm);
    let recording = Arc::new(RecordingFs::new());
    let dir = CacheDir::open_with(root, false, recording.clone() as Arc<dyn Fs>).unwrap();
    let spec = ArraySpec {
        descr: "'|u1'",
        fortran_order: false,
        shape: &[4],
    };

    let batch = CommitBatch::new(&dir, ChunkBudget::new(4));
    let mut writer = batch.begin_key("k", spec, 4).unwrap();
    writer.payload().write_block(b"new!", &mut |_| Ok(())).unwrap();
    batch.stage(writer.finish_payload().unwrap(), b"{}").unwrap();
    batch.commit().unwrap();

    assert_created_within(&recording, &["k.npy.tmp", "k.meta.json.tmp"], final_perm, at);
    assert_eq!(perm_of(root, "k.npy"), final_perm, "{at}: the final mode");
}

#[test]
fn a_temp_is_never_wider_than_the_file_it_replaces_from_its_creation_on() {
    for umask in [0o022, 0o077] {
        let previous = rustix::process::umask(Mode::from_raw_mode(umask));
        for final_perm in [0o600, 0o644, 0o640] {
            let at = format!("umask {umask:03o}, replacing {final_perm:o}");
            let tmp = tempfile::tempdir().unwrap();
            dat_write(tmp.path(), final_perm, &at);
            store_commit(tmp.path(), final_perm, &at);
        }
        rustix::process::umask(previous);
    }
}
