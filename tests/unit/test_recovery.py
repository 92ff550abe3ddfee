"""Recovery: which checkpoint an attempt restores (a run's own, else its base); restarts back off."""
import pytest

from raystream import RestartStrategy
from raystream._runtime.checkpoint_store import CheckpointStore
from raystream._runtime.manifest import Manifest, versions
from raystream._runtime.snapshot import SnapshotMeta
from raystream._runtime.recovery import RestartTracker
from raystream.errors import JobFailedError, RestoreError


def manifest(chain: str, parallelism: int) -> Manifest:
    metas = [SnapshotMeta(chain, i, f"k{i}", "0" * 64, 1) for i in range(parallelism)]
    return Manifest("j", "run", 7, 1, "exactly_once", 0.0, {chain: parallelism}, metas)


def test_restart_backoff_grows_in_a_crash_loop_and_resets_after_progress():
    t = RestartTracker(RestartStrategy.exponential_backoff(0.1, max_delay=1.0, max_restarts=5))
    assert [t.next_delay("x") for _ in range(4)] == [0.1, 0.2, 0.4, 0.8]
    assert t.next_delay("x", made_progress=True) == 0.1  # a checkpoint completed: no crash loop
    with pytest.raises(JobFailedError, match="giving up after 5 restarts.*last failure: boom"):
        t.next_delay("boom")
    assert RestartTracker(RestartStrategy.fixed_delay(0.5)).next_delay("x") == 0.5
    with pytest.raises(JobFailedError):
        RestartTracker(RestartStrategy.none()).next_delay("x")


def stored(tmp_path, ids, *, max_parallelism=128):
    store = CheckpointStore(str(tmp_path / "j"))
    store.claim_attempt("run")
    for n in ids:
        m = manifest("r", 1)
        m.checkpoint_id, m.max_parallelism = n, max_parallelism
        m.versions = versions()
        assert store.commit(m)
    return store


def test_choose_checkpoint_skips_refused_and_damaged_and_remembers_refusals(tmp_path):
    from raystream._runtime.recovery import choose_checkpoint

    store = stored(tmp_path, [1, 2, 3])
    store.storage.put(store.manifest_key("run", 3), b"{not json")
    refused: set[int] = set()
    assert choose_checkpoint(store, "run", refused, max_parallelism=128, keyed=True).checkpoint_id == 2
    assert refused == {3} and store.refused("run") == {3}
    store.refuse("run", 2, "a snapshot did not verify")
    again: set[int] = set()  # a new coordinator, or a later resume, knows from storage
    assert choose_checkpoint(store, "run", again, max_parallelism=128, keyed=True).checkpoint_id == 1
    store.refuse("run", 1, "a snapshot did not verify")
    with pytest.raises(RestoreError, match=r"no checkpoint of run run can be restored \(refused: \[1, 2, 3\]\)"):
        choose_checkpoint(store, "run", set(), max_parallelism=128, keyed=True)


def test_choose_checkpoint_refuses_another_max_parallelism_for_keyed_state(tmp_path):
    from raystream._runtime.recovery import choose_checkpoint

    store = stored(tmp_path, [1], max_parallelism=128)
    with pytest.raises(RestoreError, match="set max_parallelism=128"):
        choose_checkpoint(store, "run", set(), max_parallelism=64, keyed=True)
    assert choose_checkpoint(store, "run", set(), max_parallelism=64, keyed=False).checkpoint_id == 1


def test_a_run_started_from_a_checkpoint_restores_its_base_until_it_has_its_own(tmp_path):
    from raystream._runtime.checkpoint_store import CheckpointRef
    from raystream._runtime.recovery import choose_checkpoint

    store = stored(tmp_path, [5])
    store.claim_attempt("new")
    store.record_base("new", CheckpointRef(store.root, "run", 5))
    assert choose_checkpoint(store, "new", set(), max_parallelism=128, keyed=True).run_id == "run"
    own = manifest("r", 1)
    own.run_id, own.checkpoint_id, own.versions = "new", 6, versions()
    assert store.commit(own)
    chosen = choose_checkpoint(store, "new", set(), max_parallelism=128, keyed=True)
    assert (chosen.run_id, chosen.checkpoint_id) == ("new", 6)
    with pytest.raises(RestoreError, match="which run new started from, was refused"):
        choose_checkpoint(store, "new", {5, 6}, max_parallelism=128, keyed=True)


def test_locate_finds_a_savepoint_a_run_or_a_job_root_and_names_what_is_missing(tmp_path):
    from raystream._runtime.checkpoint_store import locate

    store = stored(tmp_path, [1, 2])
    ref = locate(store.storage.uri(store.manifest_key("run", 1)))
    assert (ref.root, ref.run_id, ref.checkpoint_id) == (store.root, "run", 1)
    assert locate(ref.uri) == ref
    assert locate(str(tmp_path / "j" / "run")).checkpoint_id == 2
    assert locate(str(tmp_path / "j")).checkpoint_id == 2
    with pytest.raises(RestoreError, match="no checkpoint at .*the manifest does not exist"):
        locate(store.storage.uri(store.manifest_key("run", 9)))
    store.storage.put("run/snapshots/000000000003/000001-r-0000.snap", b"x")
    with pytest.raises(RestoreError, match="checkpoint 3 at .* is incomplete"):
        locate(store.storage.uri(store.manifest_key("run", 3)))
    with pytest.raises(RestoreError, match="nothing is stored there"):
        locate(str(tmp_path / "nowhere"))
