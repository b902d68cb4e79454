"""``DiskBackedStore.verify``: every kind of damage is reported with its reason, clean stores verify clean,
stores written without checksums are unverified rather than damaged, and loading never verifies."""

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lazy_disk_cache import StoreKeyError, _rust
from lazy_disk_cache.integrity import (
    CHECKSUM_MISMATCH,
    INVALID_HEADER,
    INVALID_SIDECAR,
    MISSING_PAYLOAD,
    MISSING_SIDECAR,
    SIZE_MISMATCH,
    VerifyReport,
    verify_directory,
)
from lazy_disk_cache.lazy_disk_cache import stored_checksum
from stored import VARIED_ARRAYS, flip_bit, open_store, write_original_pair, write_store

NPY_HEADER_BYTES = 4096


def kind_of(reason: str) -> str:
    return reason.split(":", 1)[0]


def test_a_store_of_every_layout_verifies_clean(tmp_path: Path) -> None:
    store = write_store(tmp_path, VARIED_ARRAYS)

    report = store.verify()

    assert report == VerifyReport(checked=len(VARIED_ARRAYS), damaged={}, unverified=[])
    assert report.ok


def test_pairs_copied_from_offloaded_entries_verify_clean(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for key, array in VARIED_ARRAYS.items():
        store.add_data_to_store(key, array)
        store[key].offload()

    store.offload(pickle_container=True)

    assert store.verify() == VerifyReport(checked=len(VARIED_ARRAYS), damaged={}, unverified=[])


def test_a_reflinked_payload_records_the_checksum_of_the_committed_file(reflink_dir: Path) -> None:
    payload = np.random.default_rng(5).random((3000, 8))
    (reflink_dir / "k.dat").write_bytes(payload.tobytes())
    directory = _rust.CacheDir.open(reflink_dir)
    with directory.begin_commit(chunk_bytes=1 << 20) as batch:
        _, recorded, _ = batch.add_npy(
            "k",
            descr="'<f8'",
            fortran_order=False,
            shape=payload.shape,
            nbytes=payload.nbytes,
            meta=b"{}",
            source_file="k.dat",
        )
        batch.commit()

    computed = directory.checksum("k.npy")
    del directory, batch

    assert recorded == computed


def test_a_reloaded_and_rewritten_store_verifies_clean(tmp_path: Path) -> None:
    write_store(tmp_path, VARIED_ARRAYS)
    reopened = open_store(tmp_path)
    for key in reopened.keys():
        reopened[key]

    reopened.offload(pickle_container=True)

    assert reopened.verify().ok


def test_a_thousand_single_bit_flips_anywhere_in_the_payload_files_are_all_reported(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    arrays = {f"k{index:02d}": rng.random(int(rng.integers(1, 2048))) for index in range(16)}
    store = write_store(tmp_path, arrays)
    sizes = {key: (tmp_path / f"{key}.npy").stat().st_size for key in arrays}
    chooser = random.Random(20261206)
    flips: list[tuple[str, int]] = []
    for index in range(1000):
        key = chooser.choice(sorted(sizes))
        # One flip in ten lands in the header region, the rest in the payload.
        low, high = (0, NPY_HEADER_BYTES) if index % 10 == 0 else (NPY_HEADER_BYTES, sizes[key])
        flips.append((key, chooser.randrange(low * 8, high * 8)))
    missed: list[tuple[str, int]] = []
    kinds: set[str] = set()

    for key, bit in flips:
        path = tmp_path / f"{key}.npy"
        flip_bit(path, bit)
        try:
            report = store.verify([key])
        finally:
            flip_bit(path, bit)
        if key not in report.damaged:
            missed.append((key, bit))
        kinds.update(kind_of(reason) for reason in report.damaged.values())

    assert missed == [], f"{len(missed)} flips went unreported, e.g. {missed[:5]}"
    assert CHECKSUM_MISMATCH in kinds, kinds
    assert store.verify().ok, "every flip was undone"


def test_a_flip_that_leaves_a_valid_header_is_a_checksum_mismatch(tmp_path: Path) -> None:
    store = write_store(tmp_path, {"k": np.arange(10, dtype="<i4")})
    path = tmp_path / "k.npy"
    data = path.read_bytes()
    at = data.index(b"'<i4'") + 1
    # '<' (0x3c) -> '>' (0x3e): still a valid header, now big-endian.
    flip_bit(path, at * 8 + 1)

    report = store.verify()

    assert kind_of(report.damaged["k"]) == CHECKSUM_MISMATCH, report


@pytest.mark.parametrize(
    ("new_size", "kind"),
    [
        (NPY_HEADER_BYTES + 39, SIZE_MISMATCH),
        (NPY_HEADER_BYTES, SIZE_MISMATCH),
        (100, INVALID_HEADER),
        (0, INVALID_HEADER),
    ],
    ids=["payload-cut-short", "payload-gone", "header-cut", "empty-file"],
)
def test_a_truncated_payload_file_is_reported(tmp_path: Path, new_size: int, kind: str) -> None:
    store = write_store(tmp_path, {"k": np.arange(10, dtype="<i8"), "other": np.arange(3)})
    os.truncate(tmp_path / "k.npy", new_size)

    report = store.verify()

    assert set(report.damaged) == {"k"}, report
    assert kind_of(report.damaged["k"]) == kind, report


def test_bytes_appended_to_a_payload_file_are_a_size_mismatch(tmp_path: Path) -> None:
    store = write_store(tmp_path, {"k": np.arange(10)})
    with open(tmp_path / "k.npy", "ab") as handle:
        handle.write(b"\0")

    report = store.verify()

    assert kind_of(report.damaged["k"]) == SIZE_MISMATCH, report


@pytest.mark.parametrize(("removed", "kind"), [(".meta.json", MISSING_SIDECAR), (".npy", MISSING_PAYLOAD)])
def test_a_missing_half_of_a_pair_is_reported(tmp_path: Path, removed: str, kind: str) -> None:
    store = write_store(tmp_path, {"k": np.arange(10), "other": np.arange(3)})
    (tmp_path / f"k{removed}").unlink()

    report = store.verify()

    assert report.checked == 2
    assert set(report.damaged) == {"k"}, report
    assert kind_of(report.damaged["k"]) == kind, report


@pytest.mark.parametrize(
    "sidecar",
    [b"{not json", b"[1, 2]", b'{"schema_version": 2}', b"\xff\xfe", None],
    ids=["not-json", "not-an-object", "wrong-schema", "not-utf8", "checksum-not-a-string"],
)
def test_an_invalid_sidecar_is_reported(tmp_path: Path, sidecar: bytes | None) -> None:
    store = write_store(tmp_path, {"k": np.arange(10)})
    meta_path = tmp_path / "k.meta.json"
    if sidecar is None:
        meta = json.loads(meta_path.read_text())
        meta["checksum"] = 12345
        sidecar = json.dumps(meta).encode()
    meta_path.write_bytes(sidecar)

    report = store.verify()

    assert kind_of(report.damaged["k"]) == INVALID_SIDECAR, report


def test_pairs_written_by_the_original_are_unverified_not_damaged(tmp_path: Path) -> None:
    for key, array in VARIED_ARRAYS.items():
        write_original_pair(tmp_path, key, array)

    report = open_store(tmp_path).verify()

    assert report == VerifyReport(checked=len(VARIED_ARRAYS), damaged={}, unverified=sorted(VARIED_ARRAYS))
    assert report.ok


def test_a_structurally_damaged_pair_without_a_checksum_is_still_damaged(tmp_path: Path) -> None:
    write_original_pair(tmp_path, "k", np.arange(100))
    os.truncate(tmp_path / "k.npy", 200)

    report = verify_directory(tmp_path)

    assert kind_of(report.damaged["k"]) == SIZE_MISMATCH, report
    assert report.unverified == []


def test_pairs_written_while_checksums_are_switched_off_are_unverified(tmp_path: Path) -> None:
    _rust._set_checksums(False)
    try:
        store = write_store(tmp_path, {"k": np.arange(10)})
    finally:
        _rust._set_checksums(True)

    assert "checksum" not in json.loads((tmp_path / "k.meta.json").read_text())
    assert store.verify() == VerifyReport(checked=1, damaged={}, unverified=["k"])


def test_a_checksum_of_an_unknown_algorithm_is_unverified(tmp_path: Path) -> None:
    store = write_store(tmp_path, {"k": np.arange(10)})
    meta = json.loads((tmp_path / "k.meta.json").read_text())
    meta["checksum"] = "sha3-256:00ff"
    (tmp_path / "k.meta.json").write_text(json.dumps(meta))

    assert store.verify() == VerifyReport(checked=1, damaged={}, unverified=["k"])


def test_verify_of_chosen_keys_checks_only_those(tmp_path: Path) -> None:
    store = write_store(tmp_path, {"a": np.arange(3), "b": np.arange(4), "c": np.arange(5)})
    os.truncate(tmp_path / "c.npy", 10)

    assert store.verify(["a", "b"]) == VerifyReport(checked=2, damaged={}, unverified=[])
    assert store.verify("c").checked == 1
    assert not store.verify("c").ok


def test_verify_of_a_key_with_no_file_raises_key_error_and_of_an_illegal_key_store_key_error(tmp_path: Path) -> None:
    store = write_store(tmp_path, {"a": np.arange(3)})

    with pytest.raises(KeyError):
        store.verify(["a", "absent"])
    with pytest.raises(StoreKeyError):
        store.verify(["../a"])


def test_verify_checks_what_is_on_disk_and_skips_entries_only_in_memory(tmp_path: Path) -> None:
    store = write_store(tmp_path, {"stored": np.arange(3)})
    store.add_data_to_store("in-memory", np.arange(4))

    assert store.verify() == VerifyReport(checked=1, damaged={}, unverified=[])


def test_loading_a_damaged_pair_never_verifies_it(tmp_path: Path) -> None:
    write_store(tmp_path, {"k": np.arange(1000, dtype=np.int64)})
    flip_bit(tmp_path / "k.npy", (NPY_HEADER_BYTES + 8 * 500) * 8)
    _rust._clear_faults()

    loaded = open_store(tmp_path)["k"]

    assert _rust._op_counts()["read"] <= 2, "a reload reads the header and the sidecar, never the payload"
    assert loaded.data[500] == 501
    assert not verify_directory(tmp_path).ok


def test_the_report_serialises_to_exactly_the_documented_json(tmp_path: Path) -> None:
    store = write_store(tmp_path, {"good": np.arange(3), "bad": np.arange(4)})
    write_original_pair(tmp_path, "old", np.arange(2))
    (tmp_path / "bad.meta.json").unlink()

    payload: dict[str, Any] = json.loads(json.dumps(store.verify().to_json()))

    assert list(payload) == ["checked", "damaged", "unverified"]
    assert payload["checked"] == 3
    assert list(payload["damaged"]) == ["bad"]
    assert payload["unverified"] == ["old"]


def test_a_reloaded_entry_carries_its_recorded_checksum_until_it_writes_its_own_file(tmp_path: Path) -> None:
    write_store(tmp_path, {"k": np.arange(10)})
    recorded = json.loads((tmp_path / "k.meta.json").read_text())["checksum"]
    entry = open_store(tmp_path)["k"]

    mapped = stored_checksum(entry)
    token = entry.__dask_tokenize__()
    entry.offload()
    entry.load("r+")  # writes the entry's own .dat: the recorded checksum no longer describes it

    assert mapped == recorded
    assert isinstance(token, tuple) and token[-1] == recorded
    assert stored_checksum(entry) is None


def test_an_entry_its_store_commits_carries_the_checksum_of_the_new_pair(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.add_data_to_store("k", np.arange(10))
    entry = store["k"]

    store.offload(pickle_container=True)

    recorded = json.loads((tmp_path / "k.meta.json").read_text())["checksum"]
    token = entry.__dask_tokenize__()
    assert stored_checksum(entry) == recorded
    assert isinstance(token, tuple) and token[-1] == recorded
