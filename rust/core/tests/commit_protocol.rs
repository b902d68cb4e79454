//! The exact order of system calls of an atomic write and of a group commit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use lazy_disk_cache_core::fs::{Fs, RecordingFs};
use lazy_disk_cache_core::{ArraySpec, CacheDir, ChunkBudget, NpyWriter, Op, commit_staged};

fn recorded_dir(root: &std::path::Path) -> (CacheDir, Arc<RecordingFs>) {
    let recording = Arc::new(RecordingFs::new());
    let dir = CacheDir::open_with(root, false, recording.clone() as Arc<dyn Fs>).unwrap();
    recording.clear();
    (dir, recording)
}

fn ops_on(calls: &[lazy_disk_cache_core::fs::Call], name: &str) -> Vec<Op> {
    calls
        .iter()
        .filter(|call| call.name == name)
        .map(|call| call.op)
        .collect()
}

#[test]
fn durable_write_creates_reserves_writes_fsyncs_renames_then_fsyncs_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, recording) = recorded_dir(tmp.path());

    let mut writer = dir.begin_write("x.dat", 10, ChunkBudget::new(4)).unwrap();
    writer.write_block(b"0123456789", &mut || Ok(())).unwrap();
    dir.finish_write(writer, true).unwrap();

    let calls = recording.calls();
    let significant: Vec<(Op, &str)> = calls
        .iter()
        .filter(|call| {
            matches!(
                call.op,
                Op::Create | Op::Reserve | Op::Write | Op::Fsync | Op::Rename | Op::DirFsync
            )
        })
        .map(|call| (call.op, call.name.as_str()))
        .collect();
    assert_eq!(
        significant,
        vec![
            (Op::Create, "x.dat.tmp"),
            (Op::Reserve, "x.dat.tmp"),
            (Op::Write, "x.dat.tmp"),
            (Op::Write, "x.dat.tmp"),
            (Op::Write, "x.dat.tmp"),
            (Op::Fsync, "x.dat.tmp"),
            (Op::Rename, "x.dat.tmp"),
            (Op::DirFsync, "."),
        ]
    );
    assert!(ops_on(&calls, "x.dat.tmp").contains(&Op::Lock), "the temp is locked");
    assert_eq!(std::fs::read(tmp.path().join("x.dat")).unwrap(), b"0123456789");
}

#[test]
fn non_durable_write_never_fsyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, recording) = recorded_dir(tmp.path());

    dir.write_zeroed("x.dat", 100, false).unwrap();

    let calls = recording.calls();
    assert!(!calls.iter().any(|call| matches!(call.op, Op::Fsync | Op::DirFsync)));
    assert_eq!(calls.iter().filter(|call| call.op == Op::Rename).count(), 1);
}

#[test]
fn stale_temp_is_unlinked_before_the_exclusive_create() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("x.dat.tmp"), b"stale").unwrap();
    let (dir, recording) = recorded_dir(tmp.path());

    dir.write_zeroed("x.dat", 1, false).unwrap();

    let ops = ops_on(&recording.calls(), "x.dat.tmp");
    let unlink = ops.iter().position(|op| *op == Op::Unlink).unwrap();
    let create = ops.iter().position(|op| *op == Op::Create).unwrap();
    assert!(unlink < create);
}

fn stage_keys(dir: &CacheDir, count: usize) -> Vec<lazy_disk_cache_core::StagedKey> {
    let shape = [4u64];
    let spec = ArraySpec {
        descr: "'<i1'",
        fortran_order: false,
        shape: &shape,
    };
    (0..count)
        .map(|index| {
            let mut writer = NpyWriter::create(dir, &format!("k{index}"), spec, 4, ChunkBudget::new(1 << 20)).unwrap();
            writer.write_block(&[1, 2, 3, 4], &mut || Ok(())).unwrap();
            writer.finish(b"{}").unwrap()
        })
        .collect()
}

#[test]
fn group_commit_renames_npy_then_sidecar_per_key_then_fsyncs_the_directory_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, recording) = recorded_dir(tmp.path());
    let staged = stage_keys(&dir, 2);
    recording.clear();

    commit_staged(&dir, staged).unwrap();

    let calls: Vec<(Op, String)> = recording.calls().into_iter().map(|call| (call.op, call.name)).collect();
    assert_eq!(
        calls,
        vec![
            (Op::Rename, "k0.npy.tmp".to_owned()),
            (Op::Rename, "k0.meta.json.tmp".to_owned()),
            (Op::Rename, "k1.npy.tmp".to_owned()),
            (Op::Rename, "k1.meta.json.tmp".to_owned()),
            (Op::DirFsync, ".".to_owned()),
        ]
    );
}

#[test]
fn staging_a_key_fsyncs_both_temps_before_any_rename() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, recording) = recorded_dir(tmp.path());

    let staged = stage_keys(&dir, 1);

    let calls = recording.calls();
    assert_eq!(
        ops_on(&calls, "k0.npy.tmp")
            .iter()
            .filter(|op| **op == Op::Fsync)
            .count(),
        1
    );
    assert_eq!(
        ops_on(&calls, "k0.meta.json.tmp")
            .iter()
            .filter(|op| **op == Op::Fsync)
            .count(),
        1
    );
    assert!(!calls.iter().any(|call| call.op == Op::Rename));
    drop(staged);
}

#[test]
fn thousand_key_group_commit_does_exactly_one_directory_fsync() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, recording) = recorded_dir(tmp.path());
    let staged = stage_keys(&dir, 1000);

    commit_staged(&dir, staged).unwrap();

    let calls = recording.calls();
    assert_eq!(calls.iter().filter(|call| call.op == Op::DirFsync).count(), 1);
    assert_eq!(calls.iter().filter(|call| call.op == Op::Rename).count(), 2000);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2000);
}

#[test]
fn dropped_staged_keys_leave_no_temp() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _recording) = recorded_dir(tmp.path());

    drop(stage_keys(&dir, 3));

    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
