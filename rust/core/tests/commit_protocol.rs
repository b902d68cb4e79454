//! The exact order of system calls of an atomic write and of a group commit, and what a group
//! commit keeps open and locked while its keys are staged.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::case_sensitive_file_extension_comparisons
)]

use std::path::Path;
use std::sync::Arc;

use lazy_disk_cache_core::fs::{Call, Fs, RecordingFs};
use lazy_disk_cache_core::keylock::LOCK_FILE_NAME;
use lazy_disk_cache_core::write::WRITEBACK_STEP;
use lazy_disk_cache_core::{ArraySpec, CacheDir, ChunkBudget, CommitBatch, Error, Op, sync_pool};

/// The names in `root` other than the key lock file.
fn artefacts(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != LOCK_FILE_NAME)
        .collect()
}

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

    let mut writer = dir.begin_write("x.dat", 10, ChunkBudget::new(4), true).unwrap();
    writer.write_block(b"0123456789", &mut |_| Ok(())).unwrap();
    dir.finish_write(writer).unwrap();

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

/// Asserts that `temp` was reserved by `fallocate` before any byte was written to it: the first
/// size call is an `fallocate`, and an `ftruncate` only ever follows a refused one (a file
/// system without `fallocate`).
fn assert_fallocated_before_written(calls: &[Call], temp: &str) {
    let on_temp: Vec<&Call> = calls.iter().filter(|call| call.name == temp).collect();
    let first_write = on_temp.iter().position(|call| call.op == Op::Write);
    let first_reserve = on_temp.iter().position(|call| call.op == Op::Reserve);
    let Some(reserve) = first_reserve else {
        panic!("{temp}: never reserved: {on_temp:?}");
    };
    assert_eq!(on_temp[reserve].syscall, "fallocate", "{temp}: {on_temp:?}");
    if let Some(write) = first_write {
        assert!(reserve < write, "{temp}: written before it was reserved: {on_temp:?}");
    }
    if on_temp.iter().any(|call| call.syscall == "ftruncate") {
        assert!(
            !on_temp[reserve].ok,
            "{temp}: ftruncate after a granted fallocate: {on_temp:?}"
        );
    }
}

#[test]
fn a_dat_write_reserves_its_space_with_fallocate_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, recording) = recorded_dir(tmp.path());

    let mut writer = dir.begin_write("x.dat", 10, ChunkBudget::new(4), false).unwrap();
    writer.write_block(b"0123456789", &mut |_| Ok(())).unwrap();
    dir.finish_write(writer).unwrap();

    assert_fallocated_before_written(&recording.calls(), "x.dat.tmp");
}

#[test]
fn a_staged_key_reserves_header_and_payload_with_fallocate_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, recording) = recorded_dir(tmp.path());

    let batch = stage_keys(&dir, 2);
    batch.commit().unwrap();

    let calls = recording.calls();
    for key in ["k0", "k1"] {
        assert_fallocated_before_written(&calls, &format!("{key}.npy.tmp"));
    }
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
fn stale_temp_is_unlinked_and_the_exclusive_create_retried() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("x.dat.tmp"), b"stale").unwrap();
    let (dir, recording) = recorded_dir(tmp.path());

    dir.write_zeroed("x.dat", 1, false).unwrap();

    let calls = recording.calls();
    let on_temp: Vec<(Op, bool)> = calls
        .iter()
        .filter(|call| call.name == "x.dat.tmp")
        .map(|call| (call.op, call.ok))
        .take(5)
        .collect();
    assert_eq!(
        on_temp,
        [
            (Op::Create, false),
            (Op::Open, true),
            (Op::Lock, true),
            (Op::Unlink, true),
            (Op::Create, true)
        ],
        "an unlocked temp has no live writer: it is unlinked and the create retried"
    );
    assert_eq!(std::fs::read(tmp.path().join("x.dat")).unwrap(), [0]);
}

#[test]
fn a_fresh_temp_is_created_without_a_stale_unlink() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, recording) = recorded_dir(tmp.path());

    dir.write_zeroed("x.dat", 1, false).unwrap();

    assert!(!ops_on(&recording.calls(), "x.dat.tmp").contains(&Op::Unlink));
}

const SHAPE: [u64; 1] = [4];
const SPEC: ArraySpec<'static> = ArraySpec {
    descr: "'<i1'",
    fortran_order: false,
    shape: &SHAPE,
};

fn stage_one(batch: &CommitBatch, key: &str) {
    let mut writer = batch.begin_key(key, SPEC, 4).unwrap();
    writer.payload().write_block(&[1, 2, 3, 4], &mut |_| Ok(())).unwrap();
    batch.stage(writer.finish_payload().unwrap(), b"{}").unwrap();
}

fn stage_keys(dir: &CacheDir, count: usize) -> CommitBatch {
    let batch = CommitBatch::new(dir, ChunkBudget::new(1 << 20));
    for index in 0..count {
        stage_one(&batch, &format!("k{index}"));
    }
    batch
}

#[test]
fn group_commit_renames_npy_then_sidecar_per_key_then_fsyncs_the_directory_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, recording) = recorded_dir(tmp.path());
    let batch = stage_keys(&dir, 2);
    recording.clear();

    batch.commit().unwrap();

    let calls: Vec<(Op, String)> = recording
        .calls()
        .into_iter()
        .filter(|call| matches!(call.op, Op::Rename | Op::DirFsync))
        .map(|call| (call.op, call.name))
        .collect();
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
    assert_eq!(batch.committed(), ["k0", "k1"]);
}

#[test]
fn every_temp_is_fsynced_exactly_once_before_the_first_rename() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, recording) = recorded_dir(tmp.path());
    let batch = stage_keys(&dir, 20);

    batch.commit().unwrap();

    let calls = recording.calls();
    let first_rename = calls.iter().position(|call| call.op == Op::Rename).unwrap();
    for index in 0..20 {
        for temp in [format!("k{index}.npy.tmp"), format!("k{index}.meta.json.tmp")] {
            let fsyncs: Vec<usize> = calls
                .iter()
                .enumerate()
                .filter(|(_, call)| call.op == Op::Fsync && call.name == temp)
                .map(|(at, _)| at)
                .collect();
            assert_eq!(fsyncs.len(), 1, "{temp}: {fsyncs:?}");
            assert!(fsyncs[0] < first_rename, "{temp} fsynced after the first rename");
        }
    }
}

#[test]
fn large_payloads_start_their_writeback_while_written_and_small_ones_never() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, recording) = recorded_dir(tmp.path());
    let big = vec![7u8; 3 * WRITEBACK_STEP as usize + 5];
    let shape = [big.len() as u64];
    let spec = ArraySpec {
        descr: "'|u1'",
        fortran_order: false,
        shape: &shape,
    };
    let batch = CommitBatch::new(&dir, ChunkBudget::new(1 << 30));

    let mut writer = batch.begin_key("big", spec, big.len() as u64).unwrap();
    writer.payload().write_block(&big, &mut |_| Ok(())).unwrap();
    batch.stage(writer.finish_payload().unwrap(), b"{}").unwrap();
    stage_one(&batch, "small");
    batch.commit().unwrap();

    let calls = recording.calls();
    let writebacks = |name: &str| {
        calls
            .iter()
            .filter(|call| call.op == Op::Writeback && call.name == name)
            .count()
    };
    assert_eq!(writebacks("big.npy.tmp"), 3, "one per whole step written");
    assert_eq!(writebacks("small.npy.tmp"), 0);
    let written = std::fs::read(tmp.path().join("big.npy")).unwrap();
    assert_eq!(&written[4096..], &big[..]);
}

#[test]
fn thousand_key_group_commit_does_exactly_one_directory_fsync() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, recording) = recorded_dir(tmp.path());
    let batch = stage_keys(&dir, 1000);

    batch.commit().unwrap();

    let calls = recording.calls();
    assert_eq!(calls.iter().filter(|call| call.op == Op::DirFsync).count(), 1);
    assert_eq!(calls.iter().filter(|call| call.op == Op::Rename).count(), 2000);
    assert_eq!(artefacts(tmp.path()).len(), 2000);
}

#[test]
fn dropped_staged_keys_leave_no_temp() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _recording) = recorded_dir(tmp.path());

    drop(stage_keys(&dir, 3));

    assert_eq!(artefacts(tmp.path()).len(), 0);
}

#[test]
fn batch_holds_each_staged_keys_writer_lock_until_it_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _recording) = recorded_dir(tmp.path());
    let other = CacheDir::open(tmp.path(), false).unwrap();

    let batch = stage_keys(&dir, 2);
    let during: Vec<bool> = ["k0", "k1"]
        .iter()
        .map(|key| other.try_lock_key(key).unwrap().is_some())
        .collect();
    let unrelated = other.try_lock_key("k2").unwrap().is_some();
    batch.commit().unwrap();
    let after = other.try_lock_key("k0").unwrap().is_some();

    assert_eq!(during, [false, false], "a staged key's lock is held");
    assert!(unrelated, "keys not staged are free");
    assert!(after, "commit releases the locks");
}

#[test]
fn a_batch_commits_its_staged_keys_before_waiting_for_a_key_held_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CacheDir::open(tmp.path(), false).unwrap();
    let other = CacheDir::open(tmp.path(), false).unwrap();
    let held = other.lock_key("k1").unwrap();
    let batch = CommitBatch::new(&dir, ChunkBudget::new(4));
    stage_one(&batch, "k0");

    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| stage_one(&batch, "k1"));
        // A bound, not a speed target: k0 appears only if the batch committed it before waiting.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !tmp.path().join("k0.npy").exists() {
            assert!(std::time::Instant::now() < deadline, "k0 was never committed");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!waiter.is_finished(), "k1 waits while its lock is held elsewhere");
        assert_eq!(batch.committed(), ["k0"]);
        drop(held);
        waiter.join().unwrap();
    });
    batch.commit().unwrap();

    assert_eq!(batch.committed(), ["k0", "k1"]);
    assert_eq!(artefacts(tmp.path()).len(), 4);
}

/// How many of this process's descriptors point into `root` (other tests' files live elsewhere).
fn open_fds_under(root: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.unwrap().path()).ok())
        .filter(|target| target.starts_with(root))
        .count()
}

#[test]
fn two_thousand_key_batch_keeps_a_bounded_number_of_descriptors_open() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let dir = CacheDir::open(&root, false).unwrap();
    let batch = CommitBatch::new(&dir, ChunkBudget::new(1 << 20));
    let keys = 2000;
    let mut peak = 0;

    for index in 0..keys {
        let mut writer = batch.begin_key(&format!("k{index}"), SPEC, 4).unwrap();
        peak = peak.max(open_fds_under(&root));
        writer.payload().write_block(&[1, 2, 3, 4], &mut |_| Ok(())).unwrap();
        batch.stage(writer.finish_payload().unwrap(), b"{}").unwrap();
        peak = peak.max(open_fds_under(&root));
    }
    batch.commit().unwrap();

    // The directory itself, its key lock file, the temp being written and the temps queued for
    // or held by the fsync threads.
    let bound = 3 + sync_pool::QUEUE_DEPTH + sync_pool::MAX_THREADS;
    assert!(
        peak <= bound,
        "{peak} descriptors open into the cache directory during the batch (bound {bound})"
    );
    assert_eq!(
        open_fds_under(&root),
        2,
        "only the directory and its lock file stay open after the commit"
    );
    let names = artefacts(&root);
    assert_eq!(names.len(), 2 * keys);
    assert!(names.iter().all(|name| !name.ends_with(".tmp")));
}

#[test]
fn sweep_from_another_handle_keeps_a_live_batchs_temps_and_removes_a_crashs() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("crashed.npy.tmp"), b"left by a crash").unwrap();
    let dir = CacheDir::open(tmp.path(), false).unwrap();
    let other = CacheDir::open(tmp.path(), false).unwrap();
    let batch = stage_keys(&dir, 3);

    let during = other.sweep_temps().unwrap();
    let staged_temps_kept = tmp.path().join("k2.meta.json.tmp").exists() && tmp.path().join("k0.npy.tmp").exists();
    drop(batch);
    let after = other.sweep_temps().unwrap();

    assert_eq!(during.removed, vec!["crashed.npy.tmp".to_owned()]);
    assert!(during.failed.is_empty());
    assert!(staged_temps_kept, "the sweep removed a live batch's closed temp");
    assert!(after.removed.is_empty());
    assert_eq!(artefacts(tmp.path()).len(), 0);
}

#[test]
fn sweep_during_a_batch_removes_only_stale_temps_and_the_batch_still_commits() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("crashed.dat.tmp"), b"left by a crash").unwrap();
    let dir = CacheDir::open(tmp.path(), false).unwrap();
    let batch = stage_keys(&dir, 2);

    let during = dir.sweep_temps().unwrap();
    batch.commit().unwrap();
    let after = dir.sweep_temps().unwrap();

    assert_eq!(during.removed, vec!["crashed.dat.tmp".to_owned()]);
    assert!(after.removed.is_empty());
    for key in ["k0", "k1"] {
        let npy = std::fs::read(tmp.path().join(format!("{key}.npy"))).unwrap();
        assert_eq!(&npy[npy.len() - 4..], &[1, 2, 3, 4]);
    }
}

#[test]
fn abort_after_the_temps_are_closed_removes_every_temp_and_keeps_old_files() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("k0.npy"), b"old").unwrap();
    let (dir, _recording) = recorded_dir(tmp.path());
    let batch = stage_keys(&dir, 3);

    batch.abort();

    assert!(batch.keys().is_empty());
    let names = artefacts(tmp.path());
    assert_eq!(names, vec!["k0.npy".to_owned()]);
    assert_eq!(std::fs::read(tmp.path().join("k0.npy")).unwrap(), b"old");
}

#[test]
fn staging_a_key_twice_in_one_batch_is_refused_before_any_io() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, recording) = recorded_dir(tmp.path());
    let batch = stage_keys(&dir, 1);
    recording.clear();

    let err = batch.begin_key("k0", SPEC, 4).unwrap_err();

    assert!(matches!(err, Error::AlreadyStaged { ref key } if key == "k0"), "{err}");
    assert!(err.to_string().contains("already staged"), "{err}");
    assert_eq!(recording.calls(), Vec::new());
    assert_eq!(batch.keys(), vec!["k0".to_owned()]);
}

#[test]
fn a_staged_payload_names_the_file_its_key_holds_once_committed() {
    use std::os::unix::fs::MetadataExt;

    let tmp = tempfile::tempdir().unwrap();
    let dir = CacheDir::open(tmp.path(), false).unwrap();
    let batch = CommitBatch::new(&dir, ChunkBudget::new(1 << 20));
    let mut writer = batch.begin_key("k", SPEC, 4).unwrap();
    writer.payload().write_block(&[1, 2, 3, 4], &mut |_| Ok(())).unwrap();
    let payload = writer.finish_payload().unwrap();
    let identity = payload.identity();
    batch.stage(payload, b"{}").unwrap();
    batch.commit().unwrap();

    let committed = std::fs::metadata(tmp.path().join("k.npy")).unwrap();
    assert_eq!(identity, (committed.dev(), committed.ino()));
}
