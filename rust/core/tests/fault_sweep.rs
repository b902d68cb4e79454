//! Every step of a `.dat` write, a group commit and the two range copies (`replace_with_range`
//! and a staged key filled from a file) fails once, for every N: the injected errno surfaces with a
//! path, each destination holds its old or its new content, no temp remains, and a failed
//! fsync is never followed by a rename or a second fsync of that file. The range copies run
//! once per mechanism (reflink, `copy_file_range`, bounce buffer), pinned by [`CopyPathFs`].
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::case_sensitive_file_extension_comparisons
)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lazy_disk_cache_core::fs::{Call, CopyPath, CopyPathFs, FaultyFs, Fs, RecordingFs};
use lazy_disk_cache_core::{
    ArraySpec, CacheDir, ChunkBudget, CommitBatch, Error, FileRange, KeyWriter, NPY_DATA_ALIGN, Op,
};

const EIO: i32 = 5;

/// The steps of a `.dat` write. Unlink is left out everywhere: removing a temp after a
/// failure is best effort, and a temp it cannot remove is the sweep's business.
const DAT_OPS: &[Op] = &[
    Op::Create,
    Op::Stat,
    Op::Lock,
    Op::Chmod,
    Op::Reserve,
    Op::Write,
    Op::Fsync,
    Op::Rename,
    Op::DirFsync,
    Op::Map,
];

/// The steps of a group commit from live buffers (key locks bypass the seam).
const BATCH_OPS: &[Op] = &[
    Op::Create,
    Op::Stat,
    Op::Lock,
    Op::Chmod,
    Op::Reserve,
    Op::Write,
    Op::Fsync,
    Op::Rename,
    Op::DirFsync,
];

const PATHS: [CopyPath; 3] = [CopyPath::Reflink, CopyPath::KernelCopy, CopyPath::Bounce];

/// Three blocks plus a tail: a reflink covers the blocks and leaves the tail to the next
/// mechanism.
const COPY_LEN: usize = 3 * 4096 + 123;

/// A budget far below the payload, so copies take many pieces (many N to fail at).
const SMALL_BUDGET: u64 = 1000;

fn leftover_temps(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".tmp"))
        .collect()
}

fn assert_fsync_is_final(calls: &[Call]) {
    let failed: Vec<(usize, &Call)> = calls
        .iter()
        .enumerate()
        .filter(|(_, call)| call.op == Op::Fsync && !call.ok)
        .collect();
    for (at, failed_call) in failed {
        for later in &calls[at + 1..] {
            assert!(
                !(later.op == Op::Fsync && later.name == failed_call.name),
                "{} fsynced again after its fsync failed",
                failed_call.name
            );
            assert!(
                !(later.op == Op::Rename && later.name == failed_call.name),
                "{} renamed after its fsync failed",
                failed_call.name
            );
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|index| (index as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A fresh directory, its resolved path (the one errors name) and the root to delete it.
fn fresh_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    (tmp, root)
}

struct Outcome<T> {
    fired: bool,
    result: Result<T, Error>,
    calls: Vec<Call>,
}

/// Runs `scenario` with the `nth` call of `op` failing (counted from after the directory is
/// open) on top of `copy_path`.
fn run_faulty<T>(
    root: &Path,
    copy_path: CopyPath,
    op: Op,
    nth: u64,
    scenario: impl FnOnce(&CacheDir) -> Result<T, Error>,
) -> Outcome<T> {
    let pinned = Arc::new(CopyPathFs::new(copy_path));
    let faulty = Arc::new(FaultyFs::wrapping(pinned, op, nth, EIO));
    let recording = Arc::new(RecordingFs::wrapping(faulty.clone()));
    faulty.set_armed(false);
    let dir = CacheDir::open_with(root, false, recording.clone() as Arc<dyn Fs>).unwrap();
    faulty.set_armed(true);
    let result = scenario(&dir);
    drop(dir);
    Outcome {
        fired: faulty.fired(),
        result,
        calls: recording.calls(),
    }
}

/// Runs `scenario` once per N for each of `ops`, until the N-th call no longer happens.
/// `check` sees every run; a run without a fault must succeed and the first N must fire.
fn sweep<T>(
    label: &str,
    ops: &[Op],
    copy_path: CopyPath,
    arrange: impl Fn(&Path),
    scenario: impl Fn(&CacheDir) -> Result<T, Error>,
    check: impl Fn(&Path, Op, u64, bool, &[Call]),
) {
    for &op in ops {
        for nth in 1.. {
            let (_tmp, root) = fresh_dir();
            arrange(&root);

            let outcome = run_faulty(&root, copy_path, op, nth, &scenario);

            let at = format!("{label} {copy_path:?}: {op:?} #{nth}");
            if outcome.fired {
                let err = outcome
                    .result
                    .err()
                    .unwrap_or_else(|| panic!("{at}: the fault did not surface"));
                assert_eq!(err.raw_os_error(), Some(EIO), "{at}: {err}");
                let message = err.to_string();
                assert!(message.contains(root.to_str().unwrap()), "{at}: no path in {message}");
            } else {
                if let Err(err) = outcome.result {
                    panic!("{at}: failed without a fault: {err}");
                }
                assert!(nth > 1, "{at}: the step never ran");
            }
            check(&root, op, nth, outcome.fired, &outcome.calls);
            assert_eq!(leftover_temps(&root), Vec::<String>::new(), "{at}: temps left");
            assert_fsync_is_final(&outcome.calls);
            if !outcome.fired {
                break;
            }
        }
    }
}

fn write_dat(dir: &CacheDir, data: &[u8]) -> Result<(), Error> {
    let mut writer = dir.begin_write("x.dat", data.len() as u64, ChunkBudget::new(1000), true)?;
    for block in data.chunks(2500) {
        writer.write_block(block, &mut |_| Ok(()))?;
    }
    dir.finish_write(writer).map(drop)
}

#[test]
fn dat_write_survives_a_failure_at_every_step() {
    let old = vec![1u8; 3000];
    let new = vec![2u8; 7000];

    sweep(
        ".dat write",
        DAT_OPS,
        CopyPath::KernelCopy,
        |root| fs::write(root.join("x.dat"), &old).unwrap(),
        |dir| write_dat(dir, &new),
        |root, op, nth, fired, _calls| {
            let content = fs::read(root.join("x.dat")).unwrap();
            assert!(content == old || content == new, "{op:?} #{nth}: torn destination");
            if !fired || matches!(op, Op::DirFsync | Op::Map) {
                assert_eq!(content, new, "{op:?} #{nth}: the rename precedes this step");
            }
        },
    );
}

const KEYS: [&str; 3] = ["a", "b", "c"];
const OLD_NPY: &[u8] = b"old npy";
const OLD_META: &[u8] = b"{\"old\": true}";
const NEW_META: &[u8] = b"{\"new\": true}";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// As the store does: keys staged before a failure are still committed.
    Commit,
    /// The batch is abandoned: every staged temp must go.
    Abort,
}

impl Finish {
    /// `ops` without the steps an aborted batch never reaches or never reports: it renames
    /// nothing, and the fsyncs its threads ran are dropped with their temps, failed or not.
    fn reached(self, ops: &[Op]) -> Vec<Op> {
        ops.iter()
            .copied()
            .filter(|op| self == Finish::Commit || !matches!(op, Op::Rename | Op::DirFsync | Op::Fsync))
            .collect()
    }
}

fn plant_old_pairs(root: &Path) {
    for key in KEYS {
        fs::write(root.join(format!("{key}.npy")), OLD_NPY).unwrap();
        fs::write(root.join(format!("{key}.meta.json")), OLD_META).unwrap();
    }
}

/// Stages every key with `fill`, stopping at the first failure, then finishes the batch.
fn group_commit(
    dir: &CacheDir,
    finish: Finish,
    nbytes: usize,
    fill: impl Fn(&str, &mut lazy_disk_cache_core::PayloadWriter) -> Result<(), Error>,
) -> Result<(), Error> {
    let shape = [nbytes as u64];
    let spec = ArraySpec {
        descr: "'|u1'",
        fortran_order: false,
        shape: &shape,
    };
    let batch = CommitBatch::new(dir, ChunkBudget::new(SMALL_BUDGET));
    let mut first_error = None;
    for key in KEYS {
        let added = batch
            .begin_key(key, spec, nbytes as u64)
            .and_then(|mut writer| fill(key, writer.payload()).map(|()| writer))
            .and_then(KeyWriter::finish_payload)
            .and_then(|payload| batch.stage(payload, NEW_META));
        if let Err(err) = added {
            first_error = Some(err);
            break;
        }
    }
    let finished = match finish {
        Finish::Commit => batch.commit(),
        Finish::Abort => {
            batch.abort();
            Ok(())
        }
    };
    match first_error {
        Some(err) => Err(err),
        None => finished,
    }
}

/// Checks each key: old pair or new `.npy` (payload `new_payload(key)` at 4096) and sidecar.
fn assert_pairs_old_or_new(root: &Path, finish: Finish, new_payload: impl Fn(&str) -> Vec<u8>, at: &str) {
    for key in KEYS {
        let npy = fs::read(root.join(format!("{key}.npy"))).unwrap();
        let payload = new_payload(key);
        let start = NPY_DATA_ALIGN as usize;
        let is_new = npy.len() == start + payload.len() && npy[start..] == payload[..];
        assert!(npy == OLD_NPY || is_new, "{at}: torn {key}.npy");
        if finish == Finish::Abort {
            assert_eq!(npy, OLD_NPY, "{at}: an aborted batch renamed {key}.npy");
        }
        let meta = fs::read(root.join(format!("{key}.meta.json"))).unwrap();
        assert!(meta == OLD_META || meta == NEW_META, "{at}: torn {key}.meta.json");
    }
}

fn assert_all_new(root: &Path, new_payload: impl Fn(&str) -> Vec<u8>, at: &str) {
    for key in KEYS {
        let npy = fs::read(root.join(format!("{key}.npy"))).unwrap();
        assert_eq!(
            &npy[NPY_DATA_ALIGN as usize..],
            &new_payload(key)[..],
            "{at}: {key}.npy"
        );
        assert_eq!(
            fs::read(root.join(format!("{key}.meta.json"))).unwrap(),
            NEW_META,
            "{at}"
        );
    }
}

/// A group commit whose rename failed still fsyncs the directory afterwards, so the keys it
/// renamed before the failure are durable.
fn assert_dir_fsynced_after_the_failed_rename(calls: &[Call], at: &str) {
    let failed = calls
        .iter()
        .position(|call| call.op == Op::Rename && !call.ok)
        .unwrap_or_else(|| panic!("{at}: no failed rename recorded"));
    assert!(
        calls[failed..].iter().any(|call| call.op == Op::DirFsync && call.ok),
        "{at}: no directory fsync after the failed rename: {:?}",
        &calls[failed..]
    );
}

fn live_payload(_key: &str) -> Vec<u8> {
    vec![9u8; 5000]
}

#[test]
fn group_commit_survives_a_failure_at_every_step() {
    for finish in [Finish::Commit, Finish::Abort] {
        sweep(
            &format!("group commit then {finish:?}"),
            &finish.reached(BATCH_OPS),
            CopyPath::KernelCopy,
            plant_old_pairs,
            |dir| {
                group_commit(dir, finish, 5000, |key, writer| {
                    writer.write_block(&live_payload(key), &mut |_| Ok(()))
                })
            },
            |root, op, nth, fired, calls| {
                let at = format!("{finish:?} {op:?} #{nth}");
                assert_pairs_old_or_new(root, finish, live_payload, &at);
                if !fired && finish == Finish::Commit {
                    assert_all_new(root, live_payload, &at);
                }
                if fired && op == Op::Rename {
                    assert_dir_fsynced_after_the_failed_rename(calls, &at);
                }
            },
        );
    }
}

/// The source of the range copies: one page of other bytes, then the payload.
fn source_file() -> Vec<u8> {
    let mut bytes = vec![0xAA; NPY_DATA_ALIGN as usize];
    bytes.extend(pattern(COPY_LEN, 7));
    bytes
}

fn copy_ops(copy_path: CopyPath, base: &[Op]) -> Vec<Op> {
    let mut ops = base.to_vec();
    ops.push(Op::Copy);
    if copy_path == CopyPath::Bounce {
        ops.push(Op::Read);
        if !ops.contains(&Op::Write) {
            ops.push(Op::Write);
        }
    }
    ops
}

#[test]
fn replace_with_range_survives_a_failure_at_every_step_on_every_copy_path() {
    let old = vec![1u8; 3000];
    let source = source_file();
    let new = source[NPY_DATA_ALIGN as usize..].to_vec();
    let base = [
        Op::Open,
        Op::Create,
        Op::Stat,
        Op::Lock,
        Op::Chmod,
        Op::Reserve,
        Op::Fsync,
        Op::Rename,
        Op::DirFsync,
        Op::Map,
    ];
    for copy_path in PATHS {
        sweep(
            "replace_with_range",
            &copy_ops(copy_path, &base),
            copy_path,
            |root| {
                fs::write(root.join("src.npy"), &source).unwrap();
                fs::write(root.join("x.dat"), &old).unwrap();
            },
            |dir| {
                let src = FileRange {
                    name: "src.npy",
                    offset: NPY_DATA_ALIGN,
                    len: COPY_LEN as u64,
                };
                dir.replace_with_range(
                    src,
                    None,
                    "x.dat",
                    true,
                    ChunkBudget::new(SMALL_BUDGET),
                    &mut |_| Ok(()),
                )
                .map(drop)
            },
            |root, op, nth, fired, _calls| {
                let content = fs::read(root.join("x.dat")).unwrap();
                assert!(
                    content == old || content == new,
                    "{copy_path:?} {op:?} #{nth}: torn x.dat"
                );
                if !fired || matches!(op, Op::DirFsync | Op::Map) {
                    assert_eq!(content, new, "{copy_path:?} {op:?} #{nth}: not byte-exact");
                }
                assert_eq!(fs::read(root.join("src.npy")).unwrap(), source, "the source changed");
            },
        );
    }
}

fn file_payload(key: &str) -> Vec<u8> {
    pattern(COPY_LEN, key.as_bytes()[0])
}

#[test]
fn staged_key_from_a_file_survives_a_failure_at_every_step_on_every_copy_path() {
    for copy_path in PATHS {
        for finish in [Finish::Commit, Finish::Abort] {
            sweep(
                &format!("add_npy(source_file) then {finish:?}"),
                &finish.reached(&copy_ops(copy_path, BATCH_OPS)),
                copy_path,
                |root| {
                    plant_old_pairs(root);
                    for key in KEYS {
                        fs::write(root.join(format!("{key}.dat")), file_payload(key)).unwrap();
                    }
                },
                |dir| {
                    group_commit(dir, finish, COPY_LEN, |key, writer| {
                        writer.copy_from(&format!("{key}.dat"), 0, &mut |_| Ok(()))
                    })
                },
                |root, op, nth, fired, calls| {
                    let at = format!("{copy_path:?} {finish:?} {op:?} #{nth}");
                    assert_pairs_old_or_new(root, finish, file_payload, &at);
                    if !fired && finish == Finish::Commit {
                        assert_all_new(root, file_payload, &at);
                    }
                    if fired && op == Op::Rename {
                        assert_dir_fsynced_after_the_failed_rename(calls, &at);
                    }
                    for key in KEYS {
                        let source = fs::read(root.join(format!("{key}.dat"))).unwrap();
                        assert_eq!(source, file_payload(key), "{at}: {key}.dat changed");
                    }
                },
            );
        }
    }
}

/// Runs `replace_with_range` with `copy_path` pinned and a budget larger than the copy;
/// returns the destination and the pinned seam.
fn replace_with_range_on(copy_path: CopyPath, src_offset: u64, len: usize) -> (Vec<u8>, Vec<u8>, Arc<CopyPathFs>) {
    let (_tmp, root) = fresh_dir();
    let source = pattern(src_offset as usize + len, 3);
    fs::write(root.join("src.dat"), &source).unwrap();
    let pinned = Arc::new(CopyPathFs::new(copy_path));
    let dir = CacheDir::open_with(&root, false, pinned.clone() as Arc<dyn Fs>).unwrap();

    let src = FileRange {
        name: "src.dat",
        offset: src_offset,
        len: len as u64,
    };
    dir.replace_with_range(src, None, "dst.dat", false, ChunkBudget::new(64 << 20), &mut |_| Ok(()))
        .unwrap();

    let expected = source[src_offset as usize..].to_vec();
    (fs::read(root.join("dst.dat")).unwrap(), expected, pinned)
}

#[test]
fn reflink_path_clones_the_aligned_blocks_and_copies_the_tail_byte_exact() {
    let (copied, expected, pinned) = replace_with_range_on(CopyPath::Reflink, NPY_DATA_ALIGN, COPY_LEN);

    assert_eq!(copied, expected);
    assert_eq!((pinned.clones(), pinned.kernel_copies()), (1, 1));
}

#[test]
fn reflink_path_is_skipped_for_an_unaligned_source_offset() {
    let (copied, expected, pinned) = replace_with_range_on(CopyPath::Reflink, 100, COPY_LEN);

    assert_eq!(copied, expected);
    assert_eq!(pinned.clones(), 0);
    assert!(pinned.kernel_copies() >= 1);
}

#[test]
fn kernel_copy_path_is_byte_exact_without_a_reflink() {
    let (copied, expected, pinned) = replace_with_range_on(CopyPath::KernelCopy, NPY_DATA_ALIGN, COPY_LEN);

    assert_eq!(copied, expected);
    assert_eq!(pinned.clones(), 0);
    assert!(pinned.kernel_copies() >= 1);
}

#[test]
fn bounce_path_is_byte_exact_when_the_kernel_cannot_copy() {
    let (copied, expected, pinned) = replace_with_range_on(CopyPath::Bounce, NPY_DATA_ALIGN, COPY_LEN);

    assert_eq!(copied, expected);
    assert_eq!((pinned.clones(), pinned.kernel_copies()), (0, 0));
}

#[test]
fn bounce_path_moves_at_most_the_budget_per_piece() {
    let (_tmp, root) = fresh_dir();
    plant_old_pairs(&root);
    for key in KEYS {
        fs::write(root.join(format!("{key}.dat")), file_payload(key)).unwrap();
    }
    let recording = Arc::new(RecordingFs::wrapping(Arc::new(CopyPathFs::new(CopyPath::Bounce))));
    let dir = CacheDir::open_with(&root, false, recording.clone() as Arc<dyn Fs>).unwrap();

    group_commit(&dir, Finish::Commit, COPY_LEN, |key, writer| {
        writer.copy_from(&format!("{key}.dat"), 0, &mut |_| Ok(()))
    })
    .unwrap();

    assert_all_new(&root, file_payload, "bounce");
    let reads = recording
        .calls()
        .iter()
        .filter(|call| call.op == Op::Read && call.name == "a.dat")
        .count();
    assert_eq!(
        reads,
        COPY_LEN.div_ceil(SMALL_BUDGET as usize),
        "one read per budget-sized piece"
    );
}

/// A new batch on `dir` with every key of `keys` staged: payload `[1, 2, 3, 4]`, sidecar `NEW_META`.
fn staged_batch(dir: &CacheDir, keys: &[&str]) -> CommitBatch {
    let shape = [4u64];
    let spec = ArraySpec {
        descr: "'|u1'",
        fortran_order: false,
        shape: &shape,
    };
    let batch = CommitBatch::new(dir, ChunkBudget::new(SMALL_BUDGET));
    for key in keys {
        let mut writer = batch.begin_key(key, spec, 4).unwrap();
        writer.payload().write_block(&[1, 2, 3, 4], &mut |_| Ok(())).unwrap();
        batch.stage(writer.finish_payload().unwrap(), NEW_META).unwrap();
    }
    batch
}

/// Whichever temp's fsync fails (the fsync threads run them in any order), the keys staged
/// before that temp's key are committed, and that key and every later one keep their old pair:
/// the order the store promises for a failure part-way through `offload`.
#[test]
fn a_failed_fsync_commits_exactly_the_keys_staged_before_the_failing_one() {
    let keys = ["a", "b", "c", "d", "e"];
    for nth in 1..=2 * keys.len() as u64 {
        let (_tmp, root) = fresh_dir();
        for key in keys {
            fs::write(root.join(format!("{key}.npy")), OLD_NPY).unwrap();
            fs::write(root.join(format!("{key}.meta.json")), OLD_META).unwrap();
        }
        let faulty = Arc::new(FaultyFs::new(Op::Fsync, nth, EIO));
        let recording = Arc::new(RecordingFs::wrapping(faulty.clone()));
        let dir = CacheDir::open_with(&root, false, recording.clone() as Arc<dyn Fs>).unwrap();
        let batch = staged_batch(&dir, &keys);

        let err = batch.commit().unwrap_err();

        let failed = recording
            .calls()
            .into_iter()
            .find(|call| call.op == Op::Fsync && !call.ok)
            .unwrap();
        let failing_key = failed.name.split('.').next().unwrap().to_owned();
        let position = keys.iter().position(|key| *key == failing_key).unwrap();
        assert_eq!(err.raw_os_error(), Some(EIO), "#{nth}");
        assert!(err.to_string().contains(&failed.name), "#{nth}: {err}");
        assert_eq!(batch.committed(), keys[..position], "#{nth}");
        for (index, key) in keys.iter().enumerate() {
            let npy = fs::read(root.join(format!("{key}.npy"))).unwrap();
            let meta = fs::read(root.join(format!("{key}.meta.json"))).unwrap();
            if index < position {
                assert_eq!(&npy[NPY_DATA_ALIGN as usize..], &[1, 2, 3, 4], "#{nth}: {key}");
                assert_eq!(meta, NEW_META, "#{nth}: {key}");
            } else {
                assert_eq!(npy, OLD_NPY, "#{nth}: {key} is at or after the failing key");
                assert_eq!(meta, OLD_META, "#{nth}: {key}");
            }
        }
        assert_eq!(leftover_temps(&root), Vec::<String>::new(), "#{nth}");
        assert_fsync_is_final(&recording.calls());
    }
}

/// A commit stopped by a failed rename reports as committed only the keys whose two files were
/// both renamed before it (not a key whose sidecar rename failed), and one whose final
/// directory fsync fails reports none, since none is known durable.
#[test]
fn a_failed_rename_or_directory_fsync_reports_only_the_keys_made_durable() {
    let renames = (1..=2 * KEYS.len()).map(|nth| (Op::Rename, nth, &KEYS[..(nth - 1) / 2]));
    for (op, nth, durable) in renames.chain([(Op::DirFsync, 1, &KEYS[..0])]) {
        let (_tmp, root) = fresh_dir();
        let faulty = Arc::new(FaultyFs::new(op, nth as u64, EIO));
        let dir = CacheDir::open_with(&root, false, faulty as Arc<dyn Fs>).unwrap();
        let batch = staged_batch(&dir, &KEYS);

        let err = batch.commit().unwrap_err();

        assert_eq!(err.raw_os_error(), Some(EIO), "{op:?} #{nth}");
        assert_eq!(batch.committed(), durable, "{op:?} #{nth}");
    }
}
