"""Checkpoint storage: the commit point is exclusive, damaged bytes are refused, retention
keeps what the newest checkpoint needs."""
import pytest

from raystream._runtime.checkpoint import (
    CheckpointStore, CorruptCheckpointError, Manifest, SnapshotMeta, decode, decode_framed, encode, encode_framed,
)
from raystream._runtime.storage import LocalStorage


def test_decode_refuses_bytes_that_do_not_match_the_checksum():
    data, sha = encode({"state": [1, 2, 3]})
    assert decode(data, sha, "x") == {"state": [1, 2, 3]}
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 1
    with pytest.raises(CorruptCheckpointError, match="damaged or was replaced"):
        decode(bytes(damaged), sha, "snapshot x")
    blob = encode_framed({"p": 1})
    assert decode_framed(blob, "progress") == {"p": 1}
    with pytest.raises(CorruptCheckpointError):
        decode_framed(blob[:-1] + b"\x00", "progress")


def test_put_if_absent_never_overwrites(tmp_path):
    storage = LocalStorage(str(tmp_path))
    assert storage.put_if_absent("m/1.json", b"first")
    assert not storage.put_if_absent("m/1.json", b"second")
    assert storage.get("m/1.json") == b"first"
    assert storage.list("m/") == ["m/1.json"]  # no temporary files left behind


def make_manifest(run: str, n: int) -> Manifest:
    key = CheckpointStore.snapshot_key(run, n, 1, "c", 0)
    return Manifest("j", run, n, 1, "exactly_once", 0.0, {"c": 1}, [SnapshotMeta("c", 0, key, "0" * 64, 1)])


def test_commit_retention_and_resume_lookup(tmp_path):
    store = CheckpointStore(str(tmp_path))
    for n in range(1, 6):
        store.storage.put(CheckpointStore.snapshot_key("r1", n, 1, "c", 0), b"s")
        assert store.commit(make_manifest("r1", n))
        store.retain("r1", 2)
    assert not store.commit(make_manifest("r1", 5))  # a manifest key is used once
    assert store.manifest_ids("r1") == [4, 5]
    assert [k.split("/")[2] for k in store.storage.list("r1/snapshots/")] == ["000000000004", "000000000005"]
    store.storage.put(CheckpointStore.snapshot_key("r0", 1, 1, "c", 0), b"s")
    assert store.newest_complete().run_id == "r1"
    assert store.claim_attempt("r1") == 1 and store.claim_attempt("r1") == 2
