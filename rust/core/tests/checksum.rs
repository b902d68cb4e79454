//! The checksum a group commit reports for a key is the XXH3-64 of the whole committed `.npy`,
//! whichever way the payload arrived: a contiguous block, a gathered strided source, or a copy
//! of another file by reflink, `copy_file_range` or a bounce buffer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::Path;
use std::sync::Arc;

use lazy_disk_cache_core::checksum::digest_of;
use lazy_disk_cache_core::fs::{CopyPath, CopyPathFs, Fs, RealFs};
use lazy_disk_cache_core::{ArraySpec, CacheDir, ChunkBudget, CommitBatch, Digest, KeyWriter, StridedBytes};

/// Several pieces of a 1 MiB budget and a ragged tail: not a multiple of anything.
const PAYLOAD_LEN: usize = (3 << 20) + 4321;

fn payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|index| (index.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn spec(shape: &[u64]) -> ArraySpec<'_> {
    ArraySpec {
        descr: "'|u1'",
        fortran_order: false,
        shape,
    }
}

/// Stages `key` with the payload `fill` writes, commits, and returns the reported digest and the
/// moved byte counts `between` saw.
fn commit_key(
    dir: &CacheDir,
    budget: u64,
    key: &str,
    len: usize,
    fill: impl FnOnce(&mut KeyWriter, &mut dyn FnMut(u64) -> lazy_disk_cache_core::Result<()>),
) -> (Option<Digest>, Vec<u64>) {
    let shape = [len as u64];
    let batch = CommitBatch::new(dir, ChunkBudget::new(budget));
    let mut writer = batch.begin_key(key, spec(&shape), len as u64).unwrap();
    let mut moved = Vec::new();
    fill(&mut writer, &mut |bytes| {
        moved.push(bytes);
        Ok(())
    });
    let payload = writer.finish_payload().unwrap();
    let digest = payload.digest();
    batch.stage(payload, b"{}").unwrap();
    batch.commit().unwrap();
    (digest, moved)
}

fn whole_file_digest(path: &Path) -> Digest {
    digest_of(&fs::read(path).unwrap())
}

#[test]
fn a_contiguous_payload_reports_the_digest_of_the_whole_npy_and_its_progress_in_pieces() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CacheDir::open(tmp.path(), false).unwrap();
    let data = payload(PAYLOAD_LEN);

    let (digest, moved) = commit_key(&dir, 1 << 20, "k", PAYLOAD_LEN, |writer, between| {
        writer.payload().write_block(&data, between).unwrap();
    });

    assert_eq!(digest, Some(whole_file_digest(&tmp.path().join("k.npy"))));
    assert_eq!(moved, [1 << 20, 1 << 20, 1 << 20], "between runs between pieces only");
}

#[test]
fn a_block_split_into_several_write_slices_reports_the_digest_of_the_whole_npy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CacheDir::open(tmp.path(), false).unwrap();
    // One budget piece of over 9 MiB: written and hashed in 4 MiB slices that end on multiples
    // of 4 MiB in the file, the first one shortened by the header.
    let len = (9 << 20) + 4321;
    let data = payload(len);

    let (digest, moved) = commit_key(&dir, 16 << 20, "k", len, |writer, between| {
        writer.payload().write_block(&data, between).unwrap();
    });

    assert_eq!(digest, Some(whole_file_digest(&tmp.path().join("k.npy"))));
    assert!(moved.is_empty(), "one piece: between never runs, {moved:?}");
}

#[test]
fn a_payload_fed_in_several_blocks_reports_the_digest_of_the_whole_npy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CacheDir::open(tmp.path(), false).unwrap();
    let data = payload(PAYLOAD_LEN);

    let (digest, _) = commit_key(&dir, 64 << 10, "k", PAYLOAD_LEN, |writer, between| {
        for block in data.chunks(777_777) {
            writer.payload().write_block(block, between).unwrap();
        }
    });

    assert_eq!(digest, Some(whole_file_digest(&tmp.path().join("k.npy"))));
}

#[test]
fn a_gathered_strided_payload_reports_the_digest_of_the_whole_npy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CacheDir::open(tmp.path(), false).unwrap();
    // A (1000, 700) u8 array stored column-major: gathered into C order through the bounce buffer.
    let memory = payload(1000 * 700);
    let source = StridedBytes::new(&memory, 0, &[1000, 700], &[1, 1000], 1).unwrap();

    let (digest, _) = commit_key(&dir, 64 << 10, "k", 1000 * 700, |writer, between| {
        writer.payload().write_gathered(&source, between).unwrap();
    });

    assert_eq!(digest, Some(whole_file_digest(&tmp.path().join("k.npy"))));
}

fn copy_digest(copy_path: CopyPath) -> (Digest, Digest, Arc<CopyPathFs>) {
    let tmp = tempfile::tempdir().unwrap();
    let data = payload(PAYLOAD_LEN);
    fs::write(tmp.path().join("k.dat"), &data).unwrap();
    let copy_fs = Arc::new(CopyPathFs::wrapping(Arc::new(RealFs), copy_path));
    let dir = CacheDir::open_with(tmp.path(), false, copy_fs.clone() as Arc<dyn Fs>).unwrap();

    let (digest, _) = commit_key(&dir, 1 << 20, "k", PAYLOAD_LEN, |writer, between| {
        writer.payload().copy_from("k.dat", 0, between).unwrap();
    });

    let expected = whole_file_digest(&tmp.path().join("k.npy"));
    (digest.unwrap(), expected, copy_fs)
}

#[test]
fn a_payload_copied_on_every_copy_path_reports_the_digest_of_the_whole_npy() {
    for copy_path in [CopyPath::Reflink, CopyPath::KernelCopy, CopyPath::Bounce] {
        let (digest, expected, copy_fs) = copy_digest(copy_path);

        assert_eq!(digest, expected, "{copy_path:?}");
        if copy_path == CopyPath::Reflink {
            assert!(copy_fs.clones() >= 1, "the aligned prefix was cloned");
        }
    }
}

#[test]
fn a_copy_long_enough_to_hash_concurrently_reports_the_digest_of_the_whole_npy_and_its_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let len = (9 << 20) + 77;
    let data = payload(len);
    fs::write(tmp.path().join("k.dat"), &data).unwrap();
    let dir = CacheDir::open(tmp.path(), false).unwrap();

    let (digest, moved) = commit_key(&dir, 1 << 20, "k", len, |writer, between| {
        writer.payload().copy_from("k.dat", 0, between).unwrap();
    });

    assert_eq!(digest, Some(whole_file_digest(&tmp.path().join("k.npy"))));
    assert!(moved.iter().sum::<u64>() + (1 << 20) >= len as u64, "{moved:?}");
}

#[test]
fn a_non_hashing_writer_reports_no_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CacheDir::open(tmp.path(), false).unwrap();
    let mut writer = dir.begin_write("k.dat", 3, ChunkBudget::new(16), false).unwrap();
    writer.write_block(b"abc", &mut |_| Ok(())).unwrap();

    let (_, digest) = writer.finish_hashed().unwrap();

    assert_eq!(digest, None);
}

/// `copy_from` fills the rest of the payload: once it is full, another call copies nothing and
/// must leave the hash of the first copy, still running on its thread, in place.
#[test]
fn an_empty_copy_after_a_concurrently_hashed_one_keeps_the_digest_of_the_whole_npy() {
    let tmp = tempfile::tempdir().unwrap();
    let len = (9 << 20) + 77;
    fs::write(tmp.path().join("k.dat"), payload(len)).unwrap();
    let dir = CacheDir::open(tmp.path(), false).unwrap();

    let (digest, _) = commit_key(&dir, 1 << 20, "k", len, |writer, between| {
        writer.payload().copy_from("k.dat", 0, between).unwrap();
        writer.payload().copy_from("k.dat", len as u64, between).unwrap();
    });

    assert_eq!(digest, Some(whole_file_digest(&tmp.path().join("k.npy"))));
}
