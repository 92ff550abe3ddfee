"""Signed checkpoints in the default configuration (no RAYSTREAM_CHECKPOINT_KEY): the key
made on first use, a reader with another key, snapshots that are never unpickled unless
signed, and the opt-out (docs/security.md).

Every test here runs without a key in the environment and with its own home directory,
as a user's first `raystream run` on a fresh machine does (conftest.py)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import stat
from pathlib import Path

import cloudpickle
import pytest

import raystream as rs
from raystream._runtime.state import signing
from raystream._runtime.state.store import CheckpointStore
from raystream._runtime.state.snapshot import SnapshotMeta, SubtaskState
from raystream.errors import CheckpointKeyError, CorruptCheckpointError, RestoreError

from tests.helpers.checkpoints import Marker, choose, write_checkpoint


def test_the_first_job_makes_an_owner_only_key_and_every_manifest_is_signed_with_it(store, home):
    path = home / ".raystream" / "checkpoint_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    key = signing.current()
    assert key is not None and key.source == str(path) and len(key.secret) == 64
    raw = json.loads(store.storage.get(store.manifest_key("run", 3)))
    assert raw["key_id"] == key.key_id and len(raw["signature"]) == 64
    assert signing.current(create=True) == key  # made once; a second start reads it


def test_a_process_without_the_key_says_where_it_looked_and_never_makes_its_own(home):
    with pytest.raises(CheckpointKeyError, match=r"\.raystream/checkpoint_key does not exist.*cluster.yaml"):
        signing.current()
    assert not (home / ".raystream").exists()


def test_a_reader_with_another_key_is_told_so_and_refuses_nothing(store, monkeypatch):
    monkeypatch.setenv(signing.KEY_ENV, "the key of some other job")
    other = CheckpointStore(store.root)
    with pytest.raises(CheckpointKeyError, match=r"signed with checkpoint key \w+, and this process has key \w+ "
                                                 r"\(from RAYSTREAM_CHECKPOINT_KEY\)"):
        rs.checkpoints.read_state(store.root, "sum")
    with pytest.raises(CheckpointKeyError):
        choose(other)
    monkeypatch.delenv(signing.KEY_ENV)
    assert store.refused("run") == set()  # a configuration matter: nothing refused for good
    assert choose(store).checkpoint_id == 3


def _swap_in_a_malicious_snapshot(store: CheckpointStore, marker: Path, *, keep_signature: bool) -> None:
    """What a writer of the storage would do: replace the newest snapshot with a pickle that
    runs code, and rewrite its checksum and size in the manifest."""
    payload = cloudpickle.dumps(Marker(str(marker)))
    meta_key = store.manifest_key("run", 3)
    raw = json.loads(store.storage.get(meta_key))
    snapshot = raw["snapshots"][0]
    store.storage.put(snapshot["key"], payload)
    snapshot["sha256"] = hashlib.sha256(payload).hexdigest()
    snapshot["size"] = len(payload)
    if not keep_signature:
        raw.pop("signature")
    store.storage.put(meta_key, json.dumps(raw).encode())


def test_a_swapped_snapshot_with_a_rewritten_checksum_is_refused_and_never_unpickled(store, tmp_path):
    marker = tmp_path / "code-ran"
    _swap_in_a_malicious_snapshot(store, marker, keep_signature=True)
    with pytest.raises(RestoreError, match="does not match its signature"):
        rs.checkpoints.read_state(f"{store.root}/run/manifests/000000000003.json", "sum")
    assert choose(store).checkpoint_id == 2  # refused for good; the one before it restores
    assert 3 in store.refused("run")
    assert not marker.exists()


def test_an_unsigned_manifest_is_not_trusted_and_its_snapshot_never_unpickled(store, tmp_path):
    marker = tmp_path / "code-ran"
    _swap_in_a_malicious_snapshot(store, marker, keep_signature=False)
    with pytest.raises(CheckpointKeyError, match="is not signed.*RAYSTREAM_UNSIGNED_CHECKPOINTS=1"):
        rs.checkpoints.read_state(store.root, "sum")
    with pytest.raises(CheckpointKeyError):
        choose(store)  # the job stops and says why; it neither restores it nor refuses it for good
    assert not marker.exists()


def test_the_opt_out_is_explicit_and_warned_about(home, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(signing.UNSIGNED_ENV, "1")
    monkeypatch.setattr(signing, "_warned_unsigned", False)
    with caplog.at_level(logging.WARNING, logger="raystream._runtime.state.signing"):
        store = CheckpointStore(str(tmp_path / "j"))
    assert "unsigned checkpoints are accepted unverified" in caplog.text
    write_checkpoint(store, 1, {"a": 1})
    raw = json.loads(store.storage.get(store.manifest_key("run", 1)))
    assert "signature" not in raw and raw["key_id"] == ""
    assert rs.checkpoints.read_state(store.root, "sum").to_pylist() == [{"key": "a", "value": 1, "subtask": 0}]
    assert not (home / ".raystream").exists()  # no key is made when signing is off


def test_a_snapshot_that_decodes_to_something_else_is_refused_like_a_damaged_one(store):
    data = cloudpickle.dumps(42)  # what a swapped pickle's code returned, checksum and all
    meta = SnapshotMeta("sum", 0, store.snapshot_key("run", 3, 1, "sum", 0), hashlib.sha256(data).hexdigest(), len(data))
    with pytest.raises(CorruptCheckpointError, match="holds a int, not a snapshot"):
        store.verify_snapshot(data, meta)
    truncated = cloudpickle.dumps(SubtaskState(3, "sum", 0, 1))[:-5]
    meta = dataclasses.replace(meta, sha256=hashlib.sha256(truncated).hexdigest())
    with pytest.raises(RestoreError, match="does not decode with this job's code") as caught:
        store.verify_snapshot(truncated, meta)  # its checksum held: what the job wrote, so its code changed
    assert not isinstance(caught.value, CorruptCheckpointError)


def test_checkpoints_of_an_earlier_version_resume_once_with_the_opt_out_and_then_without_it(home, tmp_path,
                                                                                           monkeypatch):
    """The upgrade path (review of issue 22): what a raystream before signing wrote
    (unsigned manifests, plain claims, `{"checkpoint": n}` restore records, plain-text
    refusals) is read with the opt-out, fences included; what is written meanwhile is
    signed, so a savepoint taken then restores without the opt-out."""
    root = tmp_path / "ckpt" / "j"
    monkeypatch.setenv(signing.UNSIGNED_ENV, "1")
    old = CheckpointStore(str(root))
    assert old._key is None  # no key yet: writes as the earlier version did
    for n in (1, 2, 3):
        write_checkpoint(old, n, {"a": n})
    for attempt, restored in ((1, 0), (2, 1)):  # attempt 2 restored 1: 2 and 3 of attempt 1 are void
        old.storage.put(f"run/attempts/{attempt:06d}", b"1700000000.0")
        old.storage.put(f"run/restores/{attempt:06d}", json.dumps({"checkpoint": restored}).encode())
    old.storage.put("run/refused/000000000001", b"a snapshot did not verify")
    signing.current(create=True)  # the upgraded raystream's first job makes the key
    store = CheckpointStore(str(root))
    assert store.restore_points("run") == {1: 0, 2: 1} and store.refused("run") == {1}
    with pytest.raises(RestoreError, match=r"refused: \[1, 2, 3\]|no checkpoint"):
        choose(store)  # 2 and 3 void, 1 refused: nothing to restore, as the earlier version said
    store.claim_attempt("run")
    write_checkpoint(store, 4, {"a": 4})  # written with the opt-out, but signed: there is a key now
    assert "signature" in json.loads(store.storage.get(store.manifest_key("run", 4)))
    monkeypatch.delenv(signing.UNSIGNED_ENV)
    assert rs.checkpoints.read_state(f"{store.root}/run/manifests/000000000004.json", "sum").to_pylist() == [
        {"key": "a", "value": 4, "subtask": 0}]
    with pytest.raises(CheckpointKeyError, match="is not signed"):
        rs.checkpoints.read_state(f"{store.root}/run/manifests/000000000001.json", "sum")


def test_legacy_base_and_progress_records_are_read_with_the_opt_out(store, monkeypatch):
    store.storage.put("run/base.json", json.dumps({"run": "run", "root": store.root, "base_run": "run",
                                                   "checkpoint": 1, "sha256": hashlib.sha256(signing.canonical(
                                                       {"run": "run", "root": store.root, "base_run": "run",
                                                        "checkpoint": 1})).hexdigest()}).encode())
    with pytest.raises(CheckpointKeyError):
        store.origin_ref("run")
    monkeypatch.setenv(signing.UNSIGNED_ENV, "1")
    assert store.origin_ref("run").checkpoint_id == 1


def test_a_manifest_signed_before_key_ids_with_another_key_is_not_refused_for_good(store, monkeypatch):
    raw = json.loads(store.storage.get(store.manifest_key("run", 3)))
    raw.pop("signature"), raw.pop("key_id")
    raw["signature"] = signing.sign(raw, signing.Key(b"the key an earlier version had", "test"))
    store.storage.put(store.manifest_key("run", 3), json.dumps(raw).encode())
    with pytest.raises(CheckpointKeyError, match="signed by a raystream before key ids"):
        choose(store)
    assert store.refused("run") == set()
    monkeypatch.setenv(signing.UNSIGNED_ENV, "1")
    assert choose(store).checkpoint_id == 3


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user takes root")
def test_a_key_file_of_another_user_is_refused(home):
    key = signing.current(create=True)
    os.chown(key.source, 12345, -1)
    with pytest.raises(CheckpointKeyError, match="belongs to another user"):
        signing.current()
