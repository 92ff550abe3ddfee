"""A checkpoint another run starts from (B5): taken once settled, held while taken."""
import pytest

from raystream._runtime.checkpointing import origin as origin_mod
from raystream._runtime.checkpointing.locate import locate
from raystream._runtime.checkpointing.origin import hold, holds, locate_origin, unsettled
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
    assert "resume it once (--resume) or start from a savepoint" in str(info.value)
    assert clock[0] >= 3.0
    assert locate(str(tmp_path / "j" / "run")).checkpoint_id == 2  # reading it does not wait


def test_a_checkpoint_written_by_the_newest_attempt_is_settled(tmp_path):
    store = recovering_run(tmp_path)
    store.record_restore("run", 2, 2)
    assert unsettled(store, "run", 2) == [] and unsettled(store, "run", 1) == []
    assert store.claim_attempt("run") == 3  # attempt 3 claimed after both landed: it lists them
    assert unsettled(store, "run", 2) == [3]


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


def test_a_hold_on_a_checkpoint_refused_meanwhile_stops_the_start(tmp_path):
    store = CheckpointStore(str(tmp_path / "j"))
    store.claim_attempt("run")
    write_checkpoint(store, 1, {"k": 1})
    store.refuse("run", 1, "damaged")
    with pytest.raises(RestoreError, match=r"checkpoint 1 of run run was refused \(damaged\)"):
        hold(store, CheckpointRef(store.root, "run", 1), "other")
