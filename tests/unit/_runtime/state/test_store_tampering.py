"""What a writer of the checkpoint storage cannot do (docs/security.md): plant or copy
records that rewind, stop or redirect a job, malformed or oversized manifests, names the
store never writes, links out of a local root. Runs in the default configuration
(conftest.py)."""
from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

import raystream as rs
from raystream._runtime.state import signing
from raystream._runtime.state.store import CheckpointRef, CheckpointStore
from raystream._runtime.checkpointing.recovery import begin_attempt
from raystream._storage import LocalStorage
from raystream.errors import CorruptCheckpointError, RestoreError, StorageKeyError

from tests.helpers.checkpoints import choose, signed, write_checkpoint


def test_a_planted_restore_record_cannot_rewind_the_job_to_the_beginning(store):
    assert choose(store).checkpoint_id == 3
    store.claim_attempt("run")
    for attempt in (2, 99):  # a claimed attempt's record replaced, and one of no attempt at all
        store.storage.put(f"run/restores/{attempt:06d}", json.dumps({"checkpoint": 0}).encode())
    assert store.restore_points("run") == {1: 0}
    assert choose(store).checkpoint_id == 3  # on an unsigned record, every checkpoint was void: start over
    # Signed, but copied from another attempt: it names that attempt, and is ignored too.
    store.record_restore("run", 1, 0)
    store.storage.put("run/restores/000002", store.storage.get("run/restores/000001"))
    assert store.restore_points("run") == {1: 0}


def test_a_planted_refusal_refuses_nothing(store):
    store.storage.put("run/refused/000000000003", b"refused by someone who can write the bucket")
    store.storage.put("run/refused/000000000002", json.dumps({"run": "run", "checkpoint": 2, "reason": "x"}).encode())
    assert store.refused("run") == set()
    assert choose(store).checkpoint_id == 3
    store.refuse("run", 3, "a snapshot did not verify")
    assert store.refused("run") == {3} and store.refusal("run", 3) == "a snapshot did not verify"
    assert choose(store, store.refused("run")).checkpoint_id == 2
    infos = {i.checkpoint_id: i for i in rs.checkpoints.list_checkpoints(store.root)}
    assert infos[3].status == "refused" and infos[2].status == "complete"


@pytest.mark.parametrize("damage", ["deep nesting", "versions not a mapping", "snapshot key with ..",
                                    "snapshot key of another run", "chains of strings", "not an object",
                                    "checkpoint id a string", "sha256 not hex"])
def test_a_malformed_manifest_is_refused_signed_or_not(store, damage):
    key = store.manifest_key("run", 3)
    raw = json.loads(store.storage.get(key))
    if damage == "deep nesting":
        data = b'{"job": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    elif damage == "not an object":
        data = b"[1, 2, 3]"
    else:
        if damage == "versions not a mapping":
            raw["versions"] = "3.12"
        elif damage == "snapshot key with ..":
            raw["snapshots"][0]["key"] = "run/snapshots/../../../../etc/passwd"
        elif damage == "snapshot key of another run":
            raw["snapshots"][0]["key"] = "other/snapshots/000000000003/000001-sum-0000.snap"
        elif damage == "chains of strings":
            raw["chains"] = {"sum": "1"}
        elif damage == "checkpoint id a string":
            raw["checkpoint_id"] = "3"
        elif damage == "sha256 not hex":
            raw["snapshots"][0]["sha256"] = "z" * 64
        data = signed(store, raw)  # even signed, the shape is checked
    store.storage.put(key, data)
    with pytest.raises(CorruptCheckpointError):
        store.load_manifest("run", 3)
    assert choose(store).checkpoint_id == 2 and 3 in store.refused("run")


def test_names_in_listings_that_raystream_never_writes_are_skipped(store):
    for junk in ("run/manifests/latest.json", "run/attempts/x", "run/refused/../../x", "run/restores/1e3",
                 "run/snapshots/junk/file", "run/state/junk"):
        store.storage.put(junk.replace("../", ""), b"{}")
    assert store.manifest_ids("run") == [1, 2, 3]
    assert choose(store).checkpoint_id == 3
    assert store.claim_attempt("run") == 2
    store.retain("run", 1)  # retention deletes only what it wrote
    assert store.storage.list("run/snapshots/junk/") and store.storage.list("run/state/junk")


def test_an_oversized_manifest_or_snapshot_is_refused_without_being_read_whole(store):
    manifest = Path(store.storage.uri(store.manifest_key("run", 3)))
    with open(manifest, "r+b") as f:
        f.truncate(4 << 30)  # 4 GiB, sparse: reading it whole would take the memory
    with pytest.raises(CorruptCheckpointError, match="larger than"):
        store.load_manifest("run", 3)
    meta = store.load_manifest("run", 2).snapshots[0]
    with open(store.storage.uri(meta.key), "r+b") as f:
        f.truncate(4 << 30)
    with pytest.raises(CorruptCheckpointError, match="is larger than .* bytes, as recorded"):
        store.verify_snapshot(store.read_snapshot(meta), meta)
    assert len(store.storage.get(meta.key, limit=10)) == 11


def test_checkpoint_files_are_owner_only_and_keys_stay_inside_the_root(store, tmp_path):
    root = Path(store.storage.uri())
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path} is {mode:o}"
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    storage = LocalStorage(str(root))
    for key in ("../victim", "run/../../victim", "../../" + str(victim).lstrip("/")):
        with pytest.raises(StorageKeyError):
            storage.get(key)
        with pytest.raises(StorageKeyError):
            storage.delete([key])
        with pytest.raises(StorageKeyError):
            storage.put(key, b"x")
    assert victim.read_text() == "keep me"
    assert os.path.isabs(storage.uri("run/manifests/000000000001.json"))


def test_a_planted_manifest_id_neither_hides_the_next_checkpoints_nor_lets_ids_overflow(store):
    store.storage.put("run/manifests/099999999999.json", b"{}")
    assert choose(store).checkpoint_id == 3 and 99_999_999_999 in store.refused("run")
    write_checkpoint(store, 10**11, {"a": 5})  # the id the job takes next: listed, restorable
    assert store.manifest_ids("run")[-1] == 10**11 and choose(store).checkpoint_id == 10**11
    store.storage.put("run/manifests/999999999999.json", b"{}")  # the next id would not fit its name

    async def blocking(fn, *args):
        return fn(*args)

    with pytest.raises(RestoreError, match="an id raystream never reaches"):
        asyncio.run(begin_attempt(store, "run", set(), restoring=True, max_parallelism=128, keyed=True,
                                  blocking=blocking))


def test_planted_attempt_claims_neither_stop_the_running_attempt_nor_the_next_claim(store):
    store.storage.put("run/attempts/000050", b"1700000000.0")
    store.storage.put("run/attempts/999999999999", b"1700000000.0")
    store.storage.put("run/attempts/0000002", b"1700000000.0")  # not the width raystream writes
    assert store.is_current("run", 1)
    assert store.claim_attempt("run") == 51  # a number used up, nothing more
    assert not store.is_current("run", 1) and store.is_current("run", 51)


def test_a_symlinked_folder_in_local_storage_leads_no_delete_or_write_outside(store, tmp_path):
    victim = tmp_path / "documents"
    victim.mkdir()
    (victim / "000000000001-000001.base").write_text("keep me")
    os.symlink(victim, Path(store.storage.uri("run")) / "state")
    store.retain("run", 1)
    assert (victim / "000000000001-000001.base").read_text() == "keep me"
    with pytest.raises(StorageKeyError):
        store.storage.put("run/state/x", b"x")
    assert sorted(p.name for p in victim.iterdir()) == ["000000000001-000001.base"]


def test_a_local_root_under_a_link_works_as_any_other(tmp_path):
    # As /tmp is a link to /private/tmp on macOS: keys resolve under the root's real path.
    (tmp_path / "private" / "tmp").mkdir(parents=True)
    os.symlink(tmp_path / "private" / "tmp", tmp_path / "tmp")
    storage = LocalStorage(str(tmp_path / "tmp" / "ckpt"))
    storage.put("run/a", b"a")
    storage.put("run/b", b"b")
    assert storage.get("run/a") == b"a" and storage.list("run/") == ["run/a", "run/b"]
    storage.delete(["run/a"])
    assert sorted(p.name for p in (tmp_path / "private" / "tmp" / "ckpt" / "run").iterdir()) == ["b"]


def test_a_signed_record_copied_to_another_kind_or_key_does_not_verify(store):
    store.claim_attempt("run")
    store.record_restore("run", 2, 3)
    store.storage.put("run/refused/000000000003", store.storage.get("run/restores/000002"))
    assert store.refused("run") == set()
    assert choose(store).checkpoint_id == 3


def test_at_most_once_resume_is_not_redirected_by_a_planted_run(store):
    store.storage.put("zzzz/x", b"x")
    store.storage.put("zzzz/attempts/000001", b"1700000000.0")
    assert store.newest_run() == "run" and store.newest_run_with_checkpoint() == "run"


def test_records_copied_from_another_job_under_the_same_key_are_not_this_jobs(store, tmp_path):
    other = CheckpointStore(str(tmp_path / "ckpt" / "other"))
    other.claim_attempt("zrun")
    other.record_restore("zrun", 1, 0)
    write_checkpoint(other, 7, {"b": 7}, run="zrun")
    for key in other.storage.list("zrun/"):
        store.storage.put(key, other.storage.get(key))
    assert store.newest_run_with_checkpoint() == "run" and store.newest_run() == "run"
    assert store.restore_points("zrun") == {}


def test_a_local_checkpoint_root_that_is_a_link_or_writable_by_others_is_refused(home, tmp_path):
    signing.current(create=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "ckpt").mkdir()
    os.symlink(elsewhere, tmp_path / "ckpt" / "j")
    with pytest.raises(StorageKeyError, match="is a link"):
        CheckpointStore(str(tmp_path / "ckpt" / "j")).claim_attempt("run")
    assert list(elsewhere.iterdir()) == []
    shared = tmp_path / "ckpt" / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    with pytest.raises(StorageKeyError, match="writable by others"):
        CheckpointStore(str(shared)).claim_attempt("run")


def test_a_link_or_a_junk_file_at_the_next_claim_does_not_stop_the_next_attempt(store, tmp_path):
    os.symlink(tmp_path / "nowhere", Path(store.storage.uri("run/attempts")) / "000002")
    assert store.claim_attempt("run") == 3


def test_an_existence_check_is_exact_not_a_prefix(store):
    store.storage.put("run/origin.json.old", b"{}")
    store.storage.put("run/base.json.old", b"{}")
    assert store.origin_ref("run") is None
    assert choose(store).checkpoint_id == 3


def test_void_checkpoints_are_listed_as_void(store):
    store.claim_attempt("run")
    store.record_restore("run", 2, 1)  # attempt 2 restored 1: 2 and 3 of attempt 1 are void
    assert [(i.checkpoint_id, i.status) for i in rs.checkpoints.list_checkpoints(store.root)] == [
        (1, "complete"), (2, "void"), (3, "void")]


def test_the_origin_record_of_a_run_of_0_1_0_is_read(store):
    """raystream 0.1.0 named a run's origin record base.json (type "base", field base_run)."""
    key = "run/base.json"
    store.storage.put(key, signing.signed_json({"type": "base", "key": key, "job": store.job, "run": "run",
                                                "root": store.root, "base_run": "older", "checkpoint": 4},
                                               store._key))
    assert store.origin_ref("run") == CheckpointRef(store.root, "older", 4)
    store.record_origin("run", CheckpointRef(store.root, "newer", 7))  # written now: origin.json, read first
    assert store.origin_ref("run") == CheckpointRef(store.root, "newer", 7)
