"""Checkpoint storage: the commit point is exclusive, damaged bytes are refused, retention
keeps what the newest checkpoint needs."""
import dataclasses
import json

import pytest

from raystream._runtime.state.store import CheckpointStore
from raystream._runtime.state.manifest import Manifest, versions
from raystream._runtime.state.snapshot import SnapshotMeta, decode, encode
from raystream._storage import LocalStorage
from raystream._runtime.state.signing import Key
from raystream.errors import CheckpointKeyError, CorruptCheckpointError


def test_decode_refuses_bytes_that_do_not_match_the_checksum():
    data, sha = encode({"state": [1, 2, 3]})
    assert decode(data, sha, "x") == {"state": [1, 2, 3]}
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 1
    with pytest.raises(CorruptCheckpointError, match="damaged or was replaced"):
        decode(bytes(damaged), sha, "snapshot x")


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
    store = CheckpointStore(str(tmp_path / "j"))
    for n in range(1, 6):
        store.storage.put(CheckpointStore.snapshot_key("r1", n, 1, "c", 0), b"s")
        assert store.commit(make_manifest("r1", n))
        store.retain("r1", 2)
    assert not store.commit(make_manifest("r1", 5))  # a manifest key is used once
    assert store.manifest_ids("r1") == [4, 5]
    assert [k.split("/")[2] for k in store.storage.list("r1/snapshots/")] == ["000000000004", "000000000005"]
    store.storage.put(CheckpointStore.snapshot_key("r0", 1, 1, "c", 0), b"s")
    assert store.newest_run_with_checkpoint() is None  # no attempt of r1 claimed: not a run to resume
    assert store.claim_attempt("r1") == 1 and store.claim_attempt("r1") == 2
    assert store.newest_run_with_checkpoint() == "r1"


def test_signed_manifests_refuse_tampering_and_a_missing_signature():
    import json

    m = make_manifest("r", 3)
    key = Key(b"k" * 32, "test")
    signed = m.to_json(key)
    assert Manifest.from_json(signed, key) == dataclasses.replace(m, key_id=key.key_id)
    tampered = json.loads(signed)
    tampered["snapshots"][0]["sha256"] = "f" * 64  # point the checksum at other bytes
    with pytest.raises(CorruptCheckpointError, match="does not match its signature"):
        Manifest.from_json(json.dumps(tampered).encode(), key)
    # Another key, or none: the reader is told, and nothing is refused for good.
    with pytest.raises(CheckpointKeyError, match=f"signed with checkpoint key {key.key_id}.*this process has key"):
        Manifest.from_json(signed, Key(b"another key", "test"))
    with pytest.raises(CheckpointKeyError, match="not signed"):
        Manifest.from_json(m.to_json(), key)
    with pytest.raises(CorruptCheckpointError, match="not readable JSON"):
        Manifest.from_json(signed[:40], key)


def test_snapshots_of_other_versions_are_refused_with_what_to_do():
    from raystream._runtime.state.manifest import incompatibility, versions

    here = versions()
    assert incompatibility(here) is None
    older = dict(here, python="2.7.18")
    assert "written by python 2.7.18" in incompatibility(older) and "restore it with python 2.7" in incompatibility(older)
    assert incompatibility(dict(here, cloudpickle="1.0.0")).startswith("it was written by cloudpickle 1.0.0")
    patch = here["python"].rsplit(".", 1)[0] + ".99"
    assert incompatibility(dict(here, python=patch)) is None  # a patch release reads the same pickles
    for older in ("0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.6.2", "0.7.3"):  # 0.8 reads 0.1 to 0.7's
        assert incompatibility(dict(here, raystream=older)) is None
    assert "restore it with raystream 0.9" in incompatibility(dict(here, raystream="0.9.0"))
    assert "restore it with raystream 0.0" in incompatibility(dict(here, raystream="0.0.9"))


def test_retention_leaves_no_directory_behind(tmp_path):
    store = CheckpointStore(str(tmp_path / "j"))
    for n in range(1, 201):
        store.storage.put(CheckpointStore.snapshot_key("r1", n, 1, "c", 0), b"s")
        store.storage.put(CheckpointStore.snapshot_key("r1", n, 1, "c", 1), b"s")
        assert store.commit(make_manifest("r1", n))
        store.retain("r1", 3)
    snapshot_dirs = sorted(p.name for p in (tmp_path / "j" / "r1" / "snapshots").iterdir())
    assert snapshot_dirs == ["000000000198", "000000000199", "000000000200"]
    assert sum(1 for _ in (tmp_path / "j").rglob("*")) < 20  # bounded, whatever the run's length


def test_a_manifest_is_bound_to_its_run_id_and_job(tmp_path):
    key = Key(b"k" * 32, "test")
    store = CheckpointStore(str(tmp_path / "j"))
    store._key = key
    for n in (1, 2):
        assert store.commit(make_manifest("r1", n))
    assert store.load_manifest("r1", 2).checkpoint_id == 2
    # Copy the signed manifest of checkpoint 1 over a newer id: a rollback attempt.
    store.storage.put(CheckpointStore.manifest_key("r1", 3), store.storage.get(CheckpointStore.manifest_key("r1", 1)))
    with pytest.raises(CorruptCheckpointError, match="copied or moved"):
        store.load_manifest("r1", 3)
    other = CheckpointStore(str(tmp_path / "other"))
    other._key = key
    other.storage.put(CheckpointStore.manifest_key("r1", 1), store.storage.get(CheckpointStore.manifest_key("r1", 1)))
    with pytest.raises(CorruptCheckpointError, match="belongs to job 'j'"):
        other.load_manifest("r1", 1)


def test_a_signature_that_is_not_a_string_is_refused_not_a_crash():
    import json

    key = Key(b"k" * 32, "test")
    raw = json.loads(make_manifest("r", 1).to_json(key))
    for bad in (12345, None, ["x"], {"a": 1}):
        raw["signature"] = bad
        with pytest.raises((CorruptCheckpointError, CheckpointKeyError)):
            Manifest.from_json(json.dumps(raw).encode(), key)
    for not_a_manifest in (b"17", b"[1, 2]", b"null"):
        with pytest.raises(CorruptCheckpointError):
            Manifest.from_json(not_a_manifest, key)


def test_progress_is_signed_json_keyed_by_partition_and_fenced_by_attempt(tmp_path):
    store = CheckpointStore(str(tmp_path / "j"))
    store._key = Key(b"k" * 32, "test")
    store.progress.save("r", "src", 1, "s3://b/a.txt", [100, 10])
    store.progress.save("r", "src", 1, "s3://b/b.txt", [900, 90])
    store.progress.save("r", "src-b", 1, "s3://b/a.txt", [5, 1])  # another step whose id extends "src"
    store.progress.save("r", "src", 2, "s3://b/a.txt", [200, 20])
    store.progress.save("r", "src", 1, "s3://b/a.txt", [150, 15])  # a process of attempt 1 woke up late
    assert store.progress.read("r", "src") == {"s3://b/a.txt": [200, 20], "s3://b/b.txt": [900, 90]}
    assert store.progress.read("r", "src-b") == {"s3://b/a.txt": [5, 1]}
    store.progress.carry("r", "src", 3, store.progress.read("r", "src"))
    assert len(store.storage.list("r/progress/src/")) == 2
    assert store.progress.read("r", "src") == {"s3://b/a.txt": [200, 20], "s3://b/b.txt": [900, 90]}
    # Progress is never unpickled; a forged or unsigned object is refused.
    key = store.storage.list("r/progress/src/")[0]
    forged = json.loads(store.storage.get(key))
    forged["offset"] = [0, 0]
    store.storage.put(key, json.dumps(forged).encode())
    with pytest.raises(CorruptCheckpointError):
        store.progress.read("r", "src")


def test_a_late_manifest_of_a_replaced_attempt_is_void(tmp_path):
    store = CheckpointStore(str(tmp_path / "j"))
    assert store.claim_attempt("r") == 1
    store.record_restore("r", 1, 0)
    assert store.commit(make_manifest("r", 1))
    assert store.claim_attempt("r") == 2
    store.record_restore("r", 2, 1)  # attempt 2 restored checkpoint 1 ...
    late = make_manifest("r", 2)  # ... then attempt 1's slow PUT of checkpoint 2 landed
    assert store.commit(late)
    points = store.restore_points("r")
    assert points == {1: 0, 2: 1}
    assert store.is_void(late, points)
    assert not store.is_void(make_manifest("r", 1), points)
    mine = make_manifest("r", 3)
    mine.attempt = 2
    assert not store.is_void(mine, points)  # attempt 2's own later checkpoints count


def test_s3_reads_a_conflicting_object_back_no_further_than_what_it_wrote(s3_bucket, monkeypatch):
    """Review of issue 22: a put_if_absent that meets an object at its key reads it back to
    compare; a huge object planted at the next manifest's key is not read whole."""
    from raystream import _files
    from raystream._storage import S3Storage

    storage = S3Storage(s3_bucket, "chk/j")
    _files.s3_client().put_object(Bucket=s3_bucket, Key="chk/j/run/manifests/000000000001.json", Body=b"x" * 200_000)
    read = []
    real_get = S3Storage.get
    monkeypatch.setattr(S3Storage, "get", lambda self, key, limit=None: read.append(limit) or real_get(self, key, limit))
    assert not storage.put_if_absent("run/manifests/000000000001.json", b"a manifest")
    assert read == [len(b"a manifest")]
    assert len(real_get(storage, "run/manifests/000000000001.json", limit=10)) == 11


def land(store: CheckpointStore, n: int, attempt: int, parts: tuple[str, ...] = ()) -> None:
    """Checkpoint n of run r, written by `attempt`, its one snapshot stored."""
    key = CheckpointStore.snapshot_key("r", n, attempt, "c", 0)
    store.storage.put(key, b"s")
    assert store.commit(Manifest("j", "r", n, attempt, "exactly_once", 0.0, {"c": 1},
                                 [SnapshotMeta("c", 0, key, "0" * 64, 1, parts=parts)], versions=versions()))


def test_a_replaced_coordinator_deletes_nothing_the_new_attempt_restored(tmp_path):
    """C7: attempt 1's manifest 7 lands after attempt 2 restored 6 (its coordinator was cut
    off); its retention, even with retain=1, must not delete 6 or what 6 builds on."""
    store = CheckpointStore(str(tmp_path / "j"))
    assert store.claim_attempt("r") == 1
    store.record_restore("r", 1, 0)
    base = "r/state/c-0000/000000000004-000001.base"
    store.storage.put(base, b"b")
    for n in range(1, 7):
        land(store, n, 1, parts=(base,) if n > 4 else ())
        store.retain("r", 1, attempt=1)
    assert store.claim_attempt("r") == 2
    store.record_restore("r", 2, 6)
    land(store, 7, 1, parts=(base,))
    store.retain("r", 1, attempt=1)  # the replaced coordinator, as Checkpointer._complete runs it
    assert store.manifest_ids("r") == [6, 7]
    assert store.storage.list("r/state/") == [base]
    land(store, 8, 2, parts=(base, CheckpointStore.snapshot_key("r", 6, 1, "c", 0)))
    store.retain("r", 1, attempt=2)  # the current attempt: 8 is kept with what it builds on, 7 is void
    assert store.manifest_ids("r") == [8]
    kept = {CheckpointStore.snapshot_key("r", 6, 1, "c", 0), CheckpointStore.snapshot_key("r", 8, 2, "c", 0)}
    assert kept <= set(store.storage.list("r/snapshots/")) and store.storage.list("r/state/") == [base]


def test_retention_counts_only_checkpoints_a_restore_could_choose(tmp_path):
    """A void or refused manifest takes none of the `retain` places: with retain=2 the two
    newest checkpoints that count stay (6 and 8), the void 7 between them too, until
    the window passes it."""
    store = CheckpointStore(str(tmp_path / "j"))
    store.claim_attempt("r")
    store.record_restore("r", 1, 0)
    for n in range(1, 8):
        land(store, n, 1)
    store.claim_attempt("r")
    store.record_restore("r", 2, 6)  # 7 is void from here on
    land(store, 8, 2)
    store.retain("r", 2, attempt=2)
    assert store.manifest_ids("r") == [6, 7, 8]
    land(store, 9, 2)
    store.refuse("r", 9, "damaged")
    store.retain("r", 2, attempt=2)
    assert store.manifest_ids("r") == [6, 7, 8, 9]  # 9 counts for nothing: 6 and 8 stay
    land(store, 10, 2)
    store.retain("r", 2, attempt=2)
    assert store.manifest_ids("r") == [8, 9, 10]
    assert [k.split("/")[2] for k in store.storage.list("r/snapshots/")] == ["000000000008", "000000000009",
                                                                            "000000000010"]


def test_a_manifest_that_lands_after_retention_read_the_fence_is_not_counted(tmp_path):
    """Retention of checkpoint 5 reads that attempt 1 is current; then attempt 2 claims
    and chooses 5, and attempt 1's checkpoint 6 (past its own fence read, F3) lands. The
    retention must not count 6 and delete 5: it lists the manifests before the fence read
    (review 45)."""
    from raystream._runtime.checkpointing.recovery import choose_checkpoint

    class Hooked(LocalStorage):
        after_attempts_listed = None

        def list(self, prefix):
            found = super().list(prefix)
            if self.after_attempts_listed is not None and prefix.endswith("/attempts/"):
                hook, self.after_attempts_listed = self.after_attempts_listed, None
                hook()
            return found

    store = CheckpointStore(str(tmp_path / "j"), Hooked(str(tmp_path / "j")))
    store.claim_attempt("r")
    store.record_restore("r", 1, 0)
    for n in range(1, 6):
        land(store, n, 1)
    store.retain("r", 1, attempt=1)
    chosen = []

    def meanwhile():
        store.claim_attempt("r")
        chosen.append(choose_checkpoint(store, "r", set(), max_parallelism=128, keyed=True).checkpoint_id)
        land(store, 6, 1)

    store.storage.after_attempts_listed = meanwhile
    store.retain("r", 1, attempt=1)
    assert chosen == [5]
    assert 5 in store.manifest_ids("r")
    store.record_restore("r", 2, 5)
    assert choose_checkpoint(store, "r", set(), max_parallelism=128, keyed=True).checkpoint_id == 5


def test_a_restore_record_that_does_not_verify_stops_retention(tmp_path, caplog):
    """A damaged record stops the next restore (docs/security.md). Which manifests it made
    void is unknown, so retention deletes nothing until then, and says why at ERROR: counting
    void ones could keep a late void manifest alone and delete what the current attempt
    restored (review 45b)."""
    store = CheckpointStore(str(tmp_path / "j"))
    store._key = Key(b"k" * 32, "test")
    store.claim_attempt("r")
    store.record_restore("r", 1, 0)
    for n in range(1, 6):
        land(store, n, 1)
    store.claim_attempt("r")
    store.record_restore("r", 2, 5)
    land(store, 8, 1)  # attempt 1's late manifest, void by attempt 2's record
    land(store, 6, 2)
    store.storage.put("r/restores/000001", b'{"checkpoint": 0}')  # damaged: no signature
    store.retain("r", 1, attempt=2)
    assert store.manifest_ids("r") == [1, 2, 3, 4, 5, 6, 8]
    assert "retention deletes nothing" in caplog.text
