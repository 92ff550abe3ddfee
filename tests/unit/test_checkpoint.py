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
    assert store.newest_run_with_checkpoint() == "r1"
    assert store.claim_attempt("r1") == 1 and store.claim_attempt("r1") == 2


def test_signed_manifests_refuse_tampering_and_a_missing_signature():
    import json

    m = make_manifest("r", 3)
    key = b"k" * 32
    signed = m.to_json(key)
    assert Manifest.from_json(signed, key) == m
    tampered = json.loads(signed)
    tampered["snapshots"][0]["sha256"] = "f" * 64  # point the checksum at other bytes
    with pytest.raises(CorruptCheckpointError, match="does not match its signature"):
        Manifest.from_json(json.dumps(tampered).encode(), key)
    with pytest.raises(CorruptCheckpointError, match="does not match its signature"):
        Manifest.from_json(signed, b"another key")
    with pytest.raises(CorruptCheckpointError, match="not signed"):
        Manifest.from_json(m.to_json(), key)
    with pytest.raises(CorruptCheckpointError, match="not a readable manifest"):
        Manifest.from_json(signed[:40], key)


def test_snapshots_of_other_versions_are_refused_with_what_to_do():
    from raystream._runtime.checkpoint import incompatibility, versions

    here = versions()
    assert incompatibility(here) is None
    older = dict(here, python="2.7.18")
    assert "written by python 2.7.18" in incompatibility(older) and "restore it with python 2.7" in incompatibility(older)
    assert incompatibility(dict(here, cloudpickle="1.0.0")).startswith("it was written by cloudpickle 1.0.0")
    patch = here["python"].rsplit(".", 1)[0] + ".99"
    assert incompatibility(dict(here, python=patch)) is None  # a patch release reads the same pickles
