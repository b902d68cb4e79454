//! Every step of a `.dat` write and of a group commit fails once, for every N: the injected
//! errno surfaces, each destination holds its old or its new content, no temp remains, and a
//! failed fsync is never followed by a rename or a second fsync of that file.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::case_sensitive_file_extension_comparisons
)]

use std::fs;
use std::path::Path;
use std::sync::Arc;

use lazy_disk_cache_core::fs::{Call, FaultyFs, Fs, RecordingFs};
use lazy_disk_cache_core::{ArraySpec, CacheDir, ChunkBudget, Error, NpyWriter, Op, commit_staged};

const EIO: i32 = 5;
const OPS: [Op; 6] = [Op::Create, Op::Reserve, Op::Write, Op::Fsync, Op::Rename, Op::DirFsync];

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

fn errno_of(err: &Error) -> Option<i32> {
    err.raw_os_error()
}

/// Runs `scenario` with the `nth` call of `op` failing; returns (fired, result, calls).
fn run_faulty<T>(
    root: &Path,
    op: Op,
    nth: u64,
    scenario: impl FnOnce(&CacheDir) -> Result<T, Error>,
) -> (bool, Result<T, Error>, Vec<Call>) {
    let faulty = Arc::new(FaultyFs::new(op, nth, EIO));
    let recording = Arc::new(RecordingFs::wrapping(faulty.clone()));
    let dir = CacheDir::open_with(root, false, recording.clone() as Arc<dyn Fs>).unwrap();
    let result = scenario(&dir);
    drop(dir);
    (faulty.fired(), result, recording.calls())
}

fn write_dat(dir: &CacheDir, data: &[u8]) -> Result<(), Error> {
    let mut writer = dir.begin_write("x.dat", data.len() as u64, ChunkBudget::new(1000))?;
    for block in data.chunks(2500) {
        writer.write_block(block, &mut || Ok(()))?;
    }
    dir.finish_write(writer, true).map(drop)
}

#[test]
fn dat_write_survives_a_failure_at_every_step() {
    let old = vec![1u8; 3000];
    let new = vec![2u8; 7000];
    for op in OPS {
        for nth in 1.. {
            let tmp = tempfile::tempdir().unwrap();
            fs::write(tmp.path().join("x.dat"), &old).unwrap();

            let (fired, result, calls) = run_faulty(tmp.path(), op, nth, |dir| write_dat(dir, &new));

            if !fired {
                result.unwrap();
                assert!(nth > 1, "{op:?} never ran in a .dat write");
                break;
            }
            let err = result.expect_err("an injected fault must surface");
            assert_eq!(errno_of(&err), Some(EIO), "{op:?} #{nth}: {err}");
            let named = if op == Op::DirFsync {
                tmp.path().to_str().unwrap()
            } else {
                "x.dat"
            };
            assert!(err.to_string().contains(named), "{op:?} #{nth}: no path in {err}");
            let content = fs::read(tmp.path().join("x.dat")).unwrap();
            assert!(content == old || content == new, "{op:?} #{nth}: torn destination");
            if op == Op::DirFsync {
                assert_eq!(content, new, "the rename precedes the directory fsync");
            }
            assert_eq!(leftover_temps(tmp.path()), Vec::<String>::new(), "{op:?} #{nth}");
            assert_fsync_is_final(&calls);
        }
    }
}

const KEYS: [&str; 3] = ["a", "b", "c"];

fn group_commit(dir: &CacheDir, payload: &[u8]) -> Result<(), Error> {
    let shape = [payload.len() as u64];
    let spec = ArraySpec {
        descr: "'|u1'",
        fortran_order: false,
        shape: &shape,
    };
    let mut staged = Vec::new();
    let mut first_error = None;
    for key in KEYS {
        let added = NpyWriter::create(dir, key, spec, payload.len() as u64, ChunkBudget::new(1 << 20))
            .and_then(|mut writer| writer.write_block(payload, &mut || Ok(())).map(|()| writer))
            .and_then(|writer| writer.finish(b"{\"new\": true}"));
        match added {
            Ok(key) => staged.push(key),
            Err(err) => {
                first_error = Some(err);
                break;
            }
        }
    }
    // As the store does: keys added before a failure are still committed.
    let committed = commit_staged(dir, staged);
    match first_error {
        Some(err) => Err(err),
        None => committed,
    }
}

#[test]
fn group_commit_survives_a_failure_at_every_step() {
    let new_payload = vec![9u8; 5000];
    for op in OPS {
        for nth in 1.. {
            let tmp = tempfile::tempdir().unwrap();
            for key in KEYS {
                fs::write(tmp.path().join(format!("{key}.npy")), b"old npy").unwrap();
                fs::write(tmp.path().join(format!("{key}.meta.json")), b"{\"old\": true}").unwrap();
            }

            let (fired, result, calls) = run_faulty(tmp.path(), op, nth, |dir| group_commit(dir, &new_payload));

            if !fired {
                result.unwrap();
                assert!(nth > 1, "{op:?} never ran in a group commit");
                break;
            }
            let err = result.expect_err("an injected fault must surface");
            assert_eq!(errno_of(&err), Some(EIO), "{op:?} #{nth}: {err}");
            for key in KEYS {
                let npy = fs::read(tmp.path().join(format!("{key}.npy"))).unwrap();
                let is_new = npy.len() == 4096 + new_payload.len() && npy[4096..] == new_payload[..];
                assert!(npy == b"old npy" || is_new, "{op:?} #{nth}: torn {key}.npy");
                let meta = fs::read(tmp.path().join(format!("{key}.meta.json"))).unwrap();
                assert!(
                    meta == b"{\"old\": true}" || meta == b"{\"new\": true}",
                    "{op:?} #{nth}: torn sidecar"
                );
            }
            assert_eq!(leftover_temps(tmp.path()), Vec::<String>::new(), "{op:?} #{nth}");
            assert_fsync_is_final(&calls);
        }
    }
}
