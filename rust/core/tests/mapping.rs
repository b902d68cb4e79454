//! Mappings: windows at any offset, short-file refusal, zero length, c-mode privacy and
//! r+ persistence.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lazy_disk_cache_core::{CacheDir, Error, Mapping, MappingMode};

fn window(mapping: &Mapping) -> Vec<u8> {
    (0..mapping.len()).map(|index| unsafe_read(mapping, index)).collect()
}

#[allow(unsafe_code)]
fn unsafe_read(mapping: &Mapping, index: usize) -> u8 {
    assert!(index < mapping.len());
    // SAFETY: index is inside the window, which stays mapped while `mapping` lives.
    unsafe { mapping.as_ptr().add(index).read_volatile() }
}

#[allow(unsafe_code)]
fn unsafe_write(mapping: &Mapping, index: usize, value: u8) {
    assert!(index < mapping.len() && !mapping.mode().is_readonly());
    // SAFETY: index is inside a writable window, which stays mapped while `mapping` lives.
    unsafe { mapping.as_ptr().add(index).write_volatile(value) }
}

fn setup(content: &[u8]) -> (tempfile::TempDir, CacheDir) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("f.bin"), content).unwrap();
    let dir = CacheDir::open(tmp.path(), false).unwrap();
    (tmp, dir)
}

#[test]
fn window_at_an_unaligned_offset_exposes_exactly_those_bytes() {
    let content: Vec<u8> = (0..=255).collect();
    let (_tmp, dir) = setup(&content);

    let mapping = Mapping::open(&dir, "f.bin", MappingMode::ReadOnly, 77, Some(100)).unwrap();

    assert_eq!((mapping.offset(), mapping.len()), (77, 100));
    assert_eq!(window(&mapping), content[77..177]);
}

#[test]
fn window_without_length_runs_to_the_end_of_the_file() {
    let (_tmp, dir) = setup(b"0123456789");

    let mapping = Mapping::open(&dir, "f.bin", MappingMode::ReadOnly, 6, None).unwrap();

    assert_eq!(window(&mapping), b"6789");
}

#[test]
fn short_file_is_refused_before_mapping() {
    let (_tmp, dir) = setup(b"0123456789");

    let err = Mapping::open(&dir, "f.bin", MappingMode::ReadWrite, 4, Some(10)).unwrap_err();

    assert!(
        matches!(
            err,
            Error::SizeMismatch {
                expected: 14,
                actual: 10,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn offset_past_the_end_without_length_is_refused() {
    let (_tmp, dir) = setup(b"0123");

    let err = Mapping::open(&dir, "f.bin", MappingMode::ReadOnly, 5, None).unwrap_err();

    assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
}

#[test]
fn zero_length_window_is_empty_and_maps_nothing() {
    let (_tmp, dir) = setup(b"");

    let mapping = Mapping::open(&dir, "f.bin", MappingMode::ReadWrite, 0, None).unwrap();

    assert!(mapping.is_empty());
    assert!(!mapping.as_ptr().is_null());
    mapping.flush().unwrap();
}

#[test]
fn copy_on_write_changes_are_not_persisted() {
    let (tmp, dir) = setup(b"abcdef");

    let mapping = Mapping::open(&dir, "f.bin", MappingMode::CopyOnWrite, 0, None).unwrap();
    unsafe_write(&mapping, 0, b'Z');
    mapping.flush().unwrap();

    assert_eq!(window(&mapping), b"Zbcdef");
    drop(mapping);
    assert_eq!(std::fs::read(tmp.path().join("f.bin")).unwrap(), b"abcdef");
}

#[test]
fn read_write_flush_persists_changes() {
    let (tmp, dir) = setup(b"abcdef");

    let mapping = Mapping::open(&dir, "f.bin", MappingMode::ReadWrite, 3, Some(3)).unwrap();
    unsafe_write(&mapping, 1, b'E');
    mapping.flush().unwrap();

    assert_eq!(std::fs::read(tmp.path().join("f.bin")).unwrap(), b"abcdEf");
}

#[test]
fn read_write_mapping_does_not_follow_a_symlink() {
    let (tmp, dir) = setup(b"abcdef");
    std::os::unix::fs::symlink(tmp.path().join("f.bin"), tmp.path().join("link.bin")).unwrap();

    let err = Mapping::open(&dir, "link.bin", MappingMode::ReadWrite, 0, None).unwrap_err();

    assert_eq!(err.raw_os_error(), Some(40), "ELOOP expected, got {err}");
}

#[test]
fn illegal_names_are_refused() {
    let (_tmp, dir) = setup(b"x");
    for name in ["", ".", "..", "a/b", "a\0b"] {
        let err = Mapping::open(&dir, name, MappingMode::ReadOnly, 0, None).unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{name:?}: {err}");
    }
}
