"""Recovery: which checkpoint an attempt restores (a run's own, else its origin); restarts back off."""
import pytest

from raystream import RestartStrategy
from raystream._runtime.state.store import CheckpointStore
from raystream._runtime.state.manifest import Manifest, versions
from raystream._runtime.state.snapshot import SnapshotMeta
from raystream._runtime.checkpointing.recovery import RestartTracker
from raystream.errors import JobFailedError, RestoreError


def manifest(chain: str, parallelism: int, run_id: str = "run") -> Manifest:
    metas = [SnapshotMeta(chain, i, CheckpointStore.snapshot_key(run_id, 7, 1, chain, i), "0" * 64, 1)
             for i in range(parallelism)]
    return Manifest("j", run_id, 7, 1, "exactly_once", 0.0, {chain: parallelism}, metas)


def test_restart_backoff_grows_in_a_crash_loop_and_resets_after_a_quiet_period(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("raystream._runtime.checkpointing.recovery.time.monotonic", lambda: now[0])
    t = RestartTracker(RestartStrategy.exponential_backoff(0.1, max_delay=1.0, max_restarts=5))
    # the first restart is immediate; a crash loop backs off from `delay`, even when each
    # of its attempts completes a checkpoint (the first comes 0.1 s after an attempt starts)
    assert [t.next_delay("x") for _ in range(4)] == [0.0, 0.1, 0.2, 0.4]
    now[0] += 31.0  # reset_after (30 s) without a failure: no crash loop
    assert t.next_delay("x") == 0.0
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
    from raystream._runtime.checkpointing.recovery import choose_checkpoint

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
    from raystream._runtime.checkpointing.recovery import choose_checkpoint

    store = stored(tmp_path, [1], max_parallelism=128)
    with pytest.raises(RestoreError, match="set max_parallelism=128"):
        choose_checkpoint(store, "run", set(), max_parallelism=64, keyed=True)
    assert choose_checkpoint(store, "run", set(), max_parallelism=64, keyed=False).checkpoint_id == 1


def test_a_run_started_from_a_checkpoint_restores_its_origin_until_it_has_its_own(tmp_path):
    from raystream._runtime.state.store import CheckpointRef
    from raystream._runtime.checkpointing.recovery import choose_checkpoint

    store = stored(tmp_path, [5])
    store.claim_attempt("new")
    store.record_origin("new", CheckpointRef(store.root, "run", 5))
    assert choose_checkpoint(store, "new", set(), max_parallelism=128, keyed=True).run_id == "run"
    own = manifest("r", 1, "new")
    own.checkpoint_id, own.versions = 6, versions()
    assert store.commit(own)
    chosen = choose_checkpoint(store, "new", set(), max_parallelism=128, keyed=True)
    assert (chosen.run_id, chosen.checkpoint_id) == ("new", 6)
    store.claim_attempt("other")
    store.record_origin("other", CheckpointRef(store.root, "run", 5))
    store.refuse("other", 5, "a snapshot did not verify")
    with pytest.raises(RestoreError, match=r"which run other started from, was refused \(a snapshot did not"):
        choose_checkpoint(store, "other", set(), max_parallelism=128, keyed=True)


def test_locate_finds_a_savepoint_a_run_or_a_job_root_and_names_what_is_missing(tmp_path):
    from raystream._runtime.checkpointing.locate import locate

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


def own_checkpoint(store: CheckpointStore, run_id: str, n: int, attempt: int = 1) -> None:
    own = manifest("r", 1, run_id)
    own.checkpoint_id, own.attempt, own.versions = n, attempt, versions()
    assert store.commit(own)


def test_a_run_whose_own_checkpoints_are_all_refused_fails_instead_of_rewinding_to_its_origin(tmp_path):
    """R5: once a run has a checkpoint of its own, its origin is no restore point: falling
    back to it would retract (FileSink) or write again (PostgresSink) all the run committed."""
    from raystream._runtime.state.store import CheckpointRef
    from raystream._runtime.checkpointing.recovery import choose_checkpoint

    store = stored(tmp_path, [5])
    store.claim_attempt("new")
    store.record_origin("new", CheckpointRef(store.root, "run", 5))
    own_checkpoint(store, "new", 6)
    own_checkpoint(store, "new", 7)
    store.refuse("new", 7, "a snapshot did not verify")
    assert choose_checkpoint(store, "new", set(), max_parallelism=128, keyed=True).checkpoint_id == 6
    store.refuse("new", 6, "staged data gone")
    with pytest.raises(RestoreError, match=r"no checkpoint of run new can be restored \(refused: \[6, 7\]\)"):
        choose_checkpoint(store, "new", set(), max_parallelism=128, keyed=True)


def test_a_run_whose_own_checkpoints_are_all_void_restores_its_origin(tmp_path):
    """A void manifest never counted (F2): the run still has none of its own."""
    from raystream._runtime.state.store import CheckpointRef
    from raystream._runtime.checkpointing.recovery import choose_checkpoint

    store = stored(tmp_path, [5])
    store.claim_attempt("new")
    store.record_origin("new", CheckpointRef(store.root, "run", 5))
    store.claim_attempt("new")
    store.record_restore("new", 2, 5)  # attempt 2 restored the origin before attempt 1's manifest 6 landed
    own_checkpoint(store, "new", 6, attempt=1)
    chosen = choose_checkpoint(store, "new", set(), max_parallelism=128, keyed=True)
    assert (chosen.run_id, chosen.checkpoint_id) == ("run", 5)


def test_locate_never_picks_a_void_checkpoint(tmp_path):
    from raystream._runtime.checkpointing.locate import locate

    store = stored(tmp_path, [1, 2])
    store.claim_attempt("run")
    store.record_restore("run", 2, 2)  # attempt 2 restored 2: a manifest 3 of attempt 1 landing late is void
    own_checkpoint(store, "run", 3, attempt=1)
    assert locate(str(tmp_path / "j" / "run")).checkpoint_id == 2
    assert locate(str(tmp_path / "j")).checkpoint_id == 2
    with pytest.raises(RestoreError, match="checkpoint 3 at .* is void"):  # named by its own URI, too
        locate(store.storage.uri(store.manifest_key("run", 3)))
    store.refuse("run", 1, "a snapshot did not verify")
    with pytest.raises(RestoreError, match=r"checkpoint 1 at .* was refused \(a snapshot did not verify\)"):
        locate(store.storage.uri(store.manifest_key("run", 1)))
    with pytest.raises(RestoreError, match="checkpoint 3 at .* is void"):  # named by its own URI, too
        locate(store.storage.uri(store.manifest_key("run", 3)))
    store.refuse("run", 1, "a snapshot did not verify")
    with pytest.raises(RestoreError, match=r"checkpoint 1 at .* was refused \(a snapshot did not verify\)"):
        locate(store.storage.uri(store.manifest_key("run", 1)))


def test_an_origin_deleted_by_its_runs_retention_is_named_not_a_raw_file_error(tmp_path):
    from raystream._runtime.state.store import CheckpointRef
    from raystream._runtime.checkpointing.recovery import choose_checkpoint

    store = stored(tmp_path, [5])
    store.claim_attempt("new")
    store.record_origin("new", CheckpointRef(store.root, "run", 5))
    store.storage.delete([store.manifest_key("run", 5)])  # the running job's retention took it
    with pytest.raises(RestoreError, match=r"checkpoint 5 of run run, which run new started from, is gone"):
        choose_checkpoint(store, "new", set(), max_parallelism=128, keyed=True)


def test_a_run_whose_restored_checkpoint_is_gone_fails_instead_of_starting_over(tmp_path):
    """R5: an attempt restored checkpoint 6, so its output is committed; when 6 is gone and
    nothing of the run counts (only a void 7 is left), starting from nothing would write
    it again."""
    from raystream._runtime.checkpointing.recovery import choose_checkpoint

    store = stored(tmp_path, [])
    store.record_restore("run", 1, 0)
    store.claim_attempt("run")
    store.record_restore("run", 2, 6)  # 6 was deleted after this (by a raystream before 0.7.3, say)
    own_checkpoint(store, "run", 7, attempt=1)  # attempt 1's late manifest: void
    with pytest.raises(RestoreError, match="checkpoint 6 of run run, which its attempt 2 restored, is gone"):
        choose_checkpoint(store, "run", set(), max_parallelism=128, keyed=True)
