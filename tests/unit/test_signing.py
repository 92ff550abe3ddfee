"""Signed checkpoints in the default configuration (no RAYSTREAM_CHECKPOINT_KEY): the key
made on first use, what a writer of the storage can and cannot do, and the opt-out.

Every test here runs without a key in the environment and with its own home directory,
as a user's first `raystream run` on a fresh machine does."""
from __future__ import annotations

import asyncio
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
from raystream._runtime import signing
from raystream._runtime.checkpoint_store import CheckpointStore
from raystream._runtime.manifest import Manifest, versions
from raystream._runtime.recovery import begin_attempt, choose_checkpoint
from raystream._runtime.snapshot import SnapshotMeta, SubtaskState, encode
from raystream._storage import LocalStorage
from raystream.errors import CheckpointKeyError, CorruptCheckpointError, RestoreError, StorageKeyError


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """The default configuration: no key in the environment, no opt-out, a fresh home."""
    for name in (signing.KEY_ENV, signing.KEY_FILE_ENV, signing.UNSIGNED_ENV):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


class _Marker:
    """A pickle that, when unpickled, creates a file: proof that it was unpickled."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_checkpoint(store: CheckpointStore, n: int, table: dict, run: str = "run") -> None:
    data, sha = encode(SubtaskState(n, "sum", 0, 1, keyed={"sum": table}))
    key = store.snapshot_key(run, n, 1, "sum", 0)
    store.storage.put(key, data)
    assert store.commit(Manifest("j", run, n, 1, "exactly_once", 0.0, {"sum": 1},
                                 [SnapshotMeta("sum", 0, key, sha, len(data))], versions=versions(),
                                 max_parallelism=128))


@pytest.fixture
def store(home, tmp_path) -> CheckpointStore:
    signing.current(create=True)  # as the process that starts a job does
    store = CheckpointStore(str(tmp_path / "ckpt" / "j"))
    store.claim_attempt("run")
    store.record_restore("run", 1, 0)
    for n in (1, 2, 3):
        write_checkpoint(store, n, {"a": n})
    return store


def _choose(store: CheckpointStore, refused: set[int] | None = None):
    return choose_checkpoint(store, "run", set() if refused is None else refused, max_parallelism=128, keyed=True)


# --- the key ---------------------------------------------------------------------------------

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
        _choose(other)
    monkeypatch.delenv(signing.KEY_ENV)
    assert store.refused("run") == set()  # a configuration matter: nothing refused for good
    assert _choose(store).checkpoint_id == 3


# --- finding 1: replaced snapshots are never unpickled ----------------------------------------

def _swap_in_a_malicious_snapshot(store: CheckpointStore, marker: Path, *, keep_signature: bool) -> None:
    """What a writer of the storage would do: replace the newest snapshot with a pickle that
    runs code, and rewrite its checksum and size in the manifest."""
    payload = cloudpickle.dumps(_Marker(str(marker)))
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
    assert _choose(store).checkpoint_id == 2  # refused for good; the one before it restores
    assert 3 in store.refused("run")
    assert not marker.exists()


def test_an_unsigned_manifest_is_not_trusted_and_its_snapshot_never_unpickled(store, tmp_path):
    marker = tmp_path / "code-ran"
    _swap_in_a_malicious_snapshot(store, marker, keep_signature=False)
    with pytest.raises(CheckpointKeyError, match="is not signed.*RAYSTREAM_UNSIGNED_CHECKPOINTS=1"):
        rs.checkpoints.read_state(store.root, "sum")
    with pytest.raises(CheckpointKeyError):
        _choose(store)  # the job stops and says why; it neither restores it nor refuses it for good
    assert not marker.exists()


def test_the_opt_out_is_explicit_and_warned_about(home, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(signing.UNSIGNED_ENV, "1")
    monkeypatch.setattr(signing, "_warned_unsigned", False)
    with caplog.at_level(logging.WARNING, logger="raystream._runtime.signing"):
        store = CheckpointStore(str(tmp_path / "j"))
    assert "unsigned checkpoints are accepted unverified" in caplog.text
    write_checkpoint(store, 1, {"a": 1})
    raw = json.loads(store.storage.get(store.manifest_key("run", 1)))
    assert "signature" not in raw and raw["key_id"] == ""
    assert rs.checkpoints.read_state(store.root, "sum").to_pylist() == [{"key": "a", "value": 1, "subtask": 0}]
    assert not (home / ".raystream").exists()  # no key is made when signing is off


# --- finding 2: a snapshot that does not decode is refused, not retried -----------------------

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


# --- finding 3: fencing records are signed --------------------------------------------------

def test_a_planted_restore_record_cannot_rewind_the_job_to_the_beginning(store):
    assert _choose(store).checkpoint_id == 3
    store.claim_attempt("run")
    for attempt in (2, 99):  # a claimed attempt's record replaced, and one of no attempt at all
        store.storage.put(f"run/restores/{attempt:06d}", json.dumps({"checkpoint": 0}).encode())
    assert store.restore_points("run") == {1: 0}
    assert _choose(store).checkpoint_id == 3  # on an unsigned record, every checkpoint was void: start over
    # Signed, but copied from another attempt: it names that attempt, and is ignored too.
    store.record_restore("run", 1, 0)
    store.storage.put("run/restores/000002", store.storage.get("run/restores/000001"))
    assert store.restore_points("run") == {1: 0}


def test_a_planted_refusal_refuses_nothing(store):
    store.storage.put("run/refused/000000000003", b"refused by someone who can write the bucket")
    store.storage.put("run/refused/000000000002", json.dumps({"run": "run", "checkpoint": 2, "reason": "x"}).encode())
    assert store.refused("run") == set()
    assert _choose(store).checkpoint_id == 3
    store.refuse("run", 3, "a snapshot did not verify")
    assert store.refused("run") == {3} and store.refusal("run", 3) == "a snapshot did not verify"
    assert _choose(store, store.refused("run")).checkpoint_id == 2
    infos = {i.checkpoint_id: i for i in rs.checkpoints.list_checkpoints(store.root)}
    assert infos[3].status == "refused" and infos[2].status == "complete"


# --- finding 4: malformed manifests are refused, not a crash ---------------------------------

def _signed(store: CheckpointStore, raw: dict) -> bytes:
    """A manifest body signed with the job's own key, as if the job had written it."""
    key = signing.current()
    raw = dict(raw, key_id=key.key_id)
    raw.pop("signature", None)
    raw["signature"] = signing.sign(raw, key)
    return json.dumps(raw).encode()


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
        data = _signed(store, raw)  # even signed, the shape is checked
    store.storage.put(key, data)
    with pytest.raises(CorruptCheckpointError):
        store.load_manifest("run", 3)
    assert _choose(store).checkpoint_id == 2 and 3 in store.refused("run")


def test_names_in_listings_that_raystream_never_writes_are_skipped(store):
    for junk in ("run/manifests/latest.json", "run/attempts/x", "run/refused/../../x", "run/restores/1e3",
                 "run/snapshots/junk/file", "run/state/junk"):
        store.storage.put(junk.replace("../", ""), b"{}")
    assert store.manifest_ids("run") == [1, 2, 3]
    assert _choose(store).checkpoint_id == 3
    assert store.claim_attempt("run") == 2
    store.retain("run", 1)  # retention deletes only what it wrote
    assert store.storage.list("run/snapshots/junk/") and store.storage.list("run/state/junk")


# --- finding 10: sizes are checked before reading ----------------------------------------------

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


# --- finding 11 and containment: checkpoint files are private and stay under their root ---------

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
        _choose(store)  # 2 and 3 void, 1 refused: nothing to restore, as the earlier version said
    store.claim_attempt("run")
    write_checkpoint(store, 4, {"a": 4})  # written with the opt-out, but signed: there is a key now
    assert "signature" in json.loads(store.storage.get(store.manifest_key("run", 4)))
    monkeypatch.delenv(signing.UNSIGNED_ENV)
    assert rs.checkpoints.read_state(f"{store.root}/run/manifests/000000000004.json", "sum").to_pylist() == [
        {"key": "a", "value": 4, "subtask": 0}]
    with pytest.raises(CheckpointKeyError, match="is not signed"):
        rs.checkpoints.read_state(f"{store.root}/run/manifests/000000000001.json", "sum")


# --- review of issue 22: what a writer of the storage could still do --------------------------

def test_a_planted_manifest_id_neither_hides_the_next_checkpoints_nor_lets_ids_overflow(store):
    store.storage.put("run/manifests/099999999999.json", b"{}")
    assert _choose(store).checkpoint_id == 3 and 99_999_999_999 in store.refused("run")
    write_checkpoint(store, 10**11, {"a": 5})  # the id the job takes next: listed, restorable
    assert store.manifest_ids("run")[-1] == 10**11 and _choose(store).checkpoint_id == 10**11
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


def test_a_signed_record_copied_to_another_kind_or_key_does_not_verify(store):
    store.claim_attempt("run")
    store.record_restore("run", 2, 3)
    store.storage.put("run/refused/000000000003", store.storage.get("run/restores/000002"))
    assert store.refused("run") == set()
    assert _choose(store).checkpoint_id == 3


def test_at_most_once_resume_is_not_redirected_by_a_planted_run(store):
    store.storage.put("zzzz/x", b"x")
    store.storage.put("zzzz/attempts/000001", b"1700000000.0")
    assert store.newest_run() == "run" and store.newest_run_with_checkpoint() == "run"


# --- second review of issue 22 ------------------------------------------------------------------

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
    store.storage.put("run/base.json.old", b"{}")
    assert store.base_ref("run") is None
    assert _choose(store).checkpoint_id == 3


def test_legacy_base_and_progress_records_are_read_with_the_opt_out(store, monkeypatch):
    store.storage.put("run/base.json", json.dumps({"run": "run", "root": store.root, "base_run": "run",
                                                   "checkpoint": 1, "sha256": hashlib.sha256(signing.canonical(
                                                       {"run": "run", "root": store.root, "base_run": "run",
                                                        "checkpoint": 1})).hexdigest()}).encode())
    with pytest.raises(CheckpointKeyError):
        store.base_ref("run")
    monkeypatch.setenv(signing.UNSIGNED_ENV, "1")
    assert store.base_ref("run").checkpoint_id == 1


def test_a_manifest_signed_before_key_ids_with_another_key_is_not_refused_for_good(store, monkeypatch):
    raw = json.loads(store.storage.get(store.manifest_key("run", 3)))
    raw.pop("signature"), raw.pop("key_id")
    raw["signature"] = signing.sign(raw, signing.Key(b"the key an earlier version had", "test"))
    store.storage.put(store.manifest_key("run", 3), json.dumps(raw).encode())
    with pytest.raises(CheckpointKeyError, match="signed by a raystream before key ids"):
        _choose(store)
    assert store.refused("run") == set()
    monkeypatch.setenv(signing.UNSIGNED_ENV, "1")
    assert _choose(store).checkpoint_id == 3


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user takes root")
def test_a_key_file_of_another_user_is_refused(home):
    key = signing.current(create=True)
    os.chown(key.source, 12345, -1)
    with pytest.raises(CheckpointKeyError, match="belongs to another user"):
        signing.current()


def test_void_checkpoints_are_listed_as_void(store):
    store.claim_attempt("run")
    store.record_restore("run", 2, 1)  # attempt 2 restored 1: 2 and 3 of attempt 1 are void
    assert [(i.checkpoint_id, i.status) for i in rs.checkpoints.list_checkpoints(store.root)] == [
        (1, "complete"), (2, "void"), (3, "void")]
