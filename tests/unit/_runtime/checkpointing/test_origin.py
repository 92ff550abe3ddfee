"""A checkpoint another run starts from (B5): taken once settled, held while taken."""
import asyncio
import dataclasses

import pytest

from raystream._runtime.checkpointing import origin as origin_mod
from raystream._runtime.checkpointing.locate import locate
from raystream._runtime.checkpointing.recovery import begin_attempt
from raystream._runtime.checkpointing.origin import hold, holds, locate_origin, release, settle
from raystream._runtime.state.fence import MAX_CHECKPOINT_ID
from raystream._runtime.state.store import CheckpointRef, CheckpointStore
from raystream.errors import RestoreError

from tests.helpers.checkpoints import choose, write_checkpoint


def recovering_run(tmp_path) -> CheckpointStore:
    """A run whose attempt 1 wrote checkpoints 1 and 2, and whose attempt 2 has claimed
    its number but not yet recorded what it restores (R3): it may still void either."""
    store = CheckpointStore(str(tmp_path / "j"))
    store.claim_attempt("run")
    write_checkpoint(store, 1, {"k": 1})
    write_checkpoint(store, 2, {"k": 2})
    assert store.claim_attempt("run") == 2
    return store


@pytest.mark.parametrize("restored, taken", [(0, None), (1, 1), (2, 2)])
def test_a_start_from_a_recovering_run_waits_until_its_checkpoint_is_settled(tmp_path, monkeypatch, restored, taken):
    """Seed 2693 of the deep simulation: a run started from a checkpoint that the other
    run's recovering attempt then voided found that checkpoint's staged files aborted.
    The start waits for the record and takes what still counts after it (B5)."""
    store = recovering_run(tmp_path)
    polls: list[float] = []

    def recorded_meanwhile(seconds: float) -> None:  # attempt 2 records its choice while the start waits
        polls.append(seconds)
        if len(polls) == 1:
            store.record_restore("run", 2, restored)

    monkeypatch.setattr(origin_mod.time, "sleep", recorded_meanwhile)
    if taken is None:
        with pytest.raises(RestoreError, match="each was refused or is void"):
            locate_origin(str(tmp_path / "j" / "run"), timeout=10.0)
    else:
        ref = locate_origin(str(tmp_path / "j" / "run"), timeout=10.0)
        assert (ref.run_id, ref.checkpoint_id) == ("run", taken)
    assert len(polls) == 1
    # a manifest URI: the same wait, then void unless it was restored or older
    manifest = str(tmp_path / "j" / "run" / "manifests" / f"{2:012d}.json")
    if restored < 2:
        with pytest.raises(RestoreError, match="is void"):
            locate_origin(manifest, timeout=10.0)
    else:
        assert locate_origin(manifest, timeout=10.0).checkpoint_id == 2


def test_a_start_from_a_run_whose_attempt_never_records_fails_naming_it(tmp_path, monkeypatch):
    recovering_run(tmp_path)
    clock = [0.0]
    monkeypatch.setattr(origin_mod.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(origin_mod.time, "sleep", lambda seconds: clock.__setitem__(0, clock[0] + seconds))
    with pytest.raises(RestoreError) as info:
        locate_origin(str(tmp_path / "j" / "run"), timeout=3.0)
    assert "checkpoint 2 of run run is not settled: attempt 2 of that run" in str(info.value)
    assert "resuming that run once (--resume) records it as voiding nothing" in str(info.value)
    assert clock[0] >= 3.0
    assert locate(str(tmp_path / "j" / "run")).checkpoint_id == 2  # reading it does not wait


def test_the_next_attempt_closes_an_attempt_that_died_before_it_recorded(tmp_path):
    """An attempt that claimed and died before it recorded its restore made every older
    checkpoint of its run unusable for a start, for good (review of B5): the next
    attempt records it as voiding nothing, so the start goes on."""
    store = recovering_run(tmp_path)  # attempt 2 claimed and died
    attempt, manifest = asyncio.run(begin_attempt(store, "run", set(), restoring=True, max_parallelism=128,
                                                  keyed=True, blocking=_now))
    assert (attempt, manifest.checkpoint_id) == (3, 2)
    assert store.restore_points("run") == {1: MAX_CHECKPOINT_ID, 2: MAX_CHECKPOINT_ID, 3: 2}  # 1 wrote by hand
    assert store.read_record("run/restores/000002", "restore")["closed"] == "closed by attempt 3"
    assert not store.record_restore("run", 2, 1)  # attempt 2, were it alive, could not record: it claims again
    assert locate_origin(str(tmp_path / "j" / "run"), timeout=0.0).checkpoint_id == 2


def test_a_closing_attempt_never_replaces_a_record_it_cannot_verify(tmp_path):
    """Only the attempt itself may replace a record planted at its key: a closer that did
    could erase the attempt's real choice, written at the same moment."""
    store = recovering_run(tmp_path)
    store.storage.put("run/restores/000002", b'{"checkpoint": 0}')
    assert not store.record_restore("run", 2, 0, "closed by attempt 3")
    assert store.storage.get("run/restores/000002") == b'{"checkpoint": 0}'
    assert store.record_restore("run", 2, 1)  # the attempt replaces it
    assert store.restore_points("run") == {2: 1}


def test_void_and_settled_are_judged_from_one_read(tmp_path, monkeypatch):
    """A restore recorded between the start's two reads (one to name the newest that
    counts, one to see that it is settled) let a start take a void checkpoint."""
    store = recovering_run(tmp_path)
    real_locate = origin_mod.locate
    calls = []

    def located_then_recorded(uri):
        ref = real_locate(uri)
        calls.append(ref.checkpoint_id)
        if len(calls) == 1:
            store.record_restore("run", 2, 1)  # attempt 2 restores 1: checkpoint 2 is void from here on
        return ref

    monkeypatch.setattr(origin_mod, "locate", located_then_recorded)
    monkeypatch.setattr(origin_mod.time, "sleep", lambda seconds: None)
    assert locate_origin(str(tmp_path / "j" / "run")).checkpoint_id == 1 and calls == [2, 1]
    assert settle(store, CheckpointRef(store.root, "run", 2)) is None  # void
    store.storage.delete([f"run/manifests/{1:012d}.json"])  # retained away between the reads
    assert settle(store, CheckpointRef(store.root, "run", 1)) is None


def test_a_checkpoint_written_by_the_newest_attempt_is_settled(tmp_path):
    store = recovering_run(tmp_path)
    store.record_restore("run", 2, 2)
    assert settle(store, CheckpointRef(store.root, "run", 2)) == [] == settle(store, CheckpointRef(store.root, "run", 1))
    assert store.claim_attempt("run") == 3  # attempt 3 claimed after both landed: it lists them
    assert settle(store, CheckpointRef(store.root, "run", 2)) == [3]


def test_a_fall_back_past_a_checkpoint_another_run_started_from_stops_and_names_it(tmp_path):
    """Seed 69 of the simulation: run B started from checkpoint 2 of run A; A's snapshot of
    2 was then damaged, A fell back to 1 and retracted 2's output, which B's line needs."""
    store = CheckpointStore(str(tmp_path / "j"))
    store.claim_attempt("run")
    write_checkpoint(store, 1, {"k": 1})
    write_checkpoint(store, 2, {"k": 2})
    hold(store, CheckpointRef(store.root, "run", 2), "b-run")
    assert holds(store, "run") == {"b-run": 2}
    assert choose(store).checkpoint_id == 2  # nothing refused: no fall-back
    store.refuse("run", 2, "damaged")
    with pytest.raises(RestoreError) as info:
        choose(store, {2})
    assert "run run cannot fall back to checkpoint 1: checkpoint 2, refused (damaged), is where run b-run started" \
        in str(info.value)
    assert "delete " in str(info.value) and "run/held/b-run" in str(info.value)
    store.storage.delete(["run/held/b-run"])  # what the message says to do when B is not needed
    assert choose(store, {2}).checkpoint_id == 1


def test_a_hold_that_does_not_verify_is_ignored(tmp_path):
    store = CheckpointStore(str(tmp_path / "j"))
    store.claim_attempt("run")
    write_checkpoint(store, 1, {"k": 1})
    store.storage.put("run/held/planted", b'{"type": "hold", "run": "run", "by": "planted", "checkpoint": 1}')
    hold(store, CheckpointRef(store.root, "run", 1), "other")
    raw = store.storage.get("run/held/other")
    store.storage.put("run/held/copied", raw)  # a signed hold under another name: bound to its key
    assert holds(store, "run") == {"other": 1}


def test_a_hold_on_a_checkpoint_refused_meanwhile_stops_the_start_and_is_removed(tmp_path):
    store = CheckpointStore(str(tmp_path / "j"))
    store.claim_attempt("run")
    write_checkpoint(store, 1, {"k": 1})
    store.refuse("run", 1, "damaged")
    with pytest.raises(RestoreError, match=r"checkpoint 1 of run run was refused \(damaged\)"):
        hold(store, CheckpointRef(store.root, "run", 1), "other")
    assert holds(store, "run") == {}


def test_a_hold_that_cannot_be_written_stops_a_start_unless_from_a_savepoint(tmp_path, monkeypatch):
    store = CheckpointStore(str(tmp_path / "j"))
    store.claim_attempt("run")
    write_checkpoint(store, 1, {"k": 1})

    def read_only(key, body):
        raise PermissionError(13, "Permission denied", key)

    monkeypatch.setattr(store, "write_record", read_only)
    with pytest.raises(RestoreError, match="needs write access to that storage; or start from a savepoint"):
        hold(store, CheckpointRef(store.root, "run", 1), "other")
    final = store.load_manifest("run", 1)
    monkeypatch.setattr(store, "load_manifest", lambda run_id, checkpoint_id: dataclasses.replace(final, final=True))
    hold(store, CheckpointRef(store.root, "run", 1), "other")  # a savepoint: only a warning


def test_release_removes_a_hold(tmp_path):
    store = CheckpointStore(str(tmp_path / "j"))
    store.claim_attempt("run")
    write_checkpoint(store, 1, {"k": 1})
    hold(store, CheckpointRef(store.root, "run", 1), "other")
    release(store, CheckpointRef(store.root, "run", 1), "other")
    assert holds(store, "run") == {}


async def _now(fn, *args):
    return fn(*args)


def test_an_attempt_that_cannot_choose_records_that_it_voids_nothing(tmp_path):
    """Else its claim, unrecorded, would hold back every start from this run's older
    checkpoints until the start's wait ran out (review of B5)."""
    store = CheckpointStore(str(tmp_path / "j"))
    store.claim_attempt("run")
    write_checkpoint(store, 1, {"k": 1})
    with pytest.raises(RestoreError, match="max_parallelism"):
        asyncio.run(begin_attempt(store, "run", set(), restoring=True, max_parallelism=64, keyed=True, blocking=_now))
    assert store.restore_points("run") == {2: MAX_CHECKPOINT_ID}
    assert "it could not restore" in store.read_record("run/restores/000002", "restore")["closed"]
    assert settle(store, CheckpointRef(store.root, "run", 1)) == []


def test_an_attempt_closed_before_it_recorded_claims_again(tmp_path, monkeypatch):
    store = CheckpointStore(str(tmp_path / "j"))
    store.claim_attempt("run")
    write_checkpoint(store, 1, {"k": 1})
    real_claim = CheckpointStore.claim_attempt
    closed = []

    def claim_then_closed(self, run_id):  # a newer attempt closes this one while it chooses
        attempt = real_claim(self, run_id)
        if not closed:
            closed.append(attempt)
            self.record_restore(run_id, attempt, 0, "closed by attempt 9")
        return attempt

    monkeypatch.setattr(CheckpointStore, "claim_attempt", claim_then_closed)
    attempt, manifest = asyncio.run(begin_attempt(store, "run", set(), restoring=True, max_parallelism=128,
                                                  keyed=True, blocking=_now))
    assert (closed, attempt, manifest.checkpoint_id) == ([2], 3, 1)
    assert store.restore_points("run") == {1: MAX_CHECKPOINT_ID, 2: MAX_CHECKPOINT_ID, 3: 1}
