"""Recovery: restored state is merged per key group and source partition; restarts back off."""
import pytest

from raystream import RestartStrategy
from raystream._runtime.manifest import Manifest
from raystream._runtime.snapshot import SinkState, SnapshotMeta, SubtaskState
from raystream._runtime.keys import groups_of_subtask, key_group
from raystream._runtime.plan import Chain
from raystream._runtime.recovery import RestartTracker, merge_states, snapshots_for
from raystream.errors import RestoreError
from raystream.errors import JobFailedError
from raystream.graph import Step


def old_states(parallelism=2):
    """Two subtasks' snapshots of a keyed step; keys split by key group."""
    states = []
    for i in range(parallelism):
        groups = set(groups_of_subtask(i, parallelism, 128))
        table = {k: k * 10 for k in range(100) if key_group(k, 128) in groups}
        states.append(SubtaskState(7, "r", i, parallelism, source_offsets={f"p{i}": i * 100},
                                   keyed={"r": table}, sinks={"out": SinkState(["w"], [(6, "t6"), (7, "t7")])},
                                   counters={"r": (len(table), len(table))}))
    return states


def test_same_parallelism_restores_everything_of_its_own_snapshot():
    states = old_states()
    merged = merge_states([states[1]], 1, 2, 128)
    assert merged.keyed == states[1].keyed and merged.checkpoint_id == 7
    assert merged.sink_txns == {"out": ["t6", "t7"]} and merged.sink_states == {"out": ["w"]}
    assert merged.counters == states[1].counters


def test_rescaling_keeps_each_key_exactly_once():
    states = old_states(2)
    merged = [merge_states(states, i, 3, 128) for i in range(3)]
    keys = [k for m in merged for k in m.keyed["r"]]
    assert sorted(keys) == list(range(100))
    for i, m in enumerate(merged):
        assert all(key_group(k, 128) in groups_of_subtask(i, 3, 128) for k in m.keyed["r"])
        assert m.source_offsets == {"p0": 0, "p1": 100}  # a subtask picks its partitions later


def manifest(chain: str, parallelism: int) -> Manifest:
    metas = [SnapshotMeta(chain, i, f"k{i}", "0" * 64, 1) for i in range(parallelism)]
    return Manifest("j", "run", 7, 1, "exactly_once", 0.0, {chain: parallelism}, metas)


def test_snapshots_for_picks_own_snapshot_or_all_when_rescaling():
    chain = Chain(0, [Step("r", "reduce", ("k",))], 2)
    assert [m.subtask for m in snapshots_for(manifest("r", 2), chain, 1)] == [1]
    assert [m.subtask for m in snapshots_for(manifest("r", 3), chain, 1)] == [0, 1, 2]


def test_a_sink_cannot_be_rescaled_and_a_changed_graph_is_refused():
    sink_chain = Chain(0, [Step("r", "reduce", ("k",)), Step("out", "sink", ("r",))], 2)
    with pytest.raises(RestoreError, match="a sink's state is per subtask; keep the parallelism of 'r\+out'"):
        snapshots_for(manifest("r+out", 3), sink_chain, 0)
    with pytest.raises(RestoreError, match="job graph changed"):
        snapshots_for(manifest("other", 2), sink_chain, 0)


def test_restart_backoff_grows_in_a_crash_loop_and_resets_after_progress():
    t = RestartTracker(RestartStrategy.exponential_backoff(0.1, max_delay=1.0, max_restarts=5))
    assert [t.next_delay("x") for _ in range(4)] == [0.1, 0.2, 0.4, 0.8]
    assert t.next_delay("x", made_progress=True) == 0.1  # a checkpoint completed: no crash loop
    with pytest.raises(JobFailedError, match="giving up after 5 restarts.*last failure: boom"):
        t.next_delay("boom")
    assert RestartTracker(RestartStrategy.fixed_delay(0.5)).next_delay("x") == 0.5
    with pytest.raises(JobFailedError):
        RestartTracker(RestartStrategy.none()).next_delay("x")


def test_a_chain_with_dead_letters_cannot_be_rescaled():
    chain = Chain(0, [Step("r", "reduce", ("k",))], 2)
    assert len(snapshots_for(manifest("r", 3), chain, 0)) == 3
    with pytest.raises(RestoreError, match="dead-letter writer's state is per subtask"):
        snapshots_for(manifest("r", 3), chain, 0, dead_letters=True)


def test_a_source_subtask_reads_the_offsets_of_every_old_subtask_own_snapshot_first():
    chain = Chain(0, [Step("src", "source", ())], 3)
    assert [m.subtask for m in snapshots_for(manifest("src", 3), chain, 1)] == [1, 0, 2]
    own_and_others = [SubtaskState(7, "src", i, 3, source_offsets={f"f{i}": i * 10},
                                   counters={"src": (0, 10 + i)}, audit={"source:src": (10 + i, i)})
                      for i in (1, 0, 2)]
    merged = merge_states(own_and_others, 1, 3, 128)
    assert merged.source_offsets == {"f0": 0, "f1": 10, "f2": 20}  # partitions continue wherever they go
    assert merged.counters == {"src": (0, 11)} and merged.audit == {"source:src": (11, 1)}  # its own only


def test_counters_and_audit_tallies_are_summed_once_after_a_rescale():
    states = [SubtaskState(7, "src", i, 2, counters={"src": (0, 100 + i)}, audit={"source:src": (100 + i, 2**63 + i)},
                           errors={"src": i}) for i in range(2)]
    merged = [merge_states(states, i, 3, 128) for i in range(3)]
    assert merged[0].counters == {"src": (0, 201)} and merged[0].errors == {"src": 1}
    assert merged[0].audit == {"source:src": (201, (2**64 + 1) % 2**64)}
    assert all(not m.counters and not m.audit for m in merged[1:])


def stored(tmp_path, ids, *, max_parallelism=128):
    from raystream._runtime.checkpoint_store import CheckpointStore

    store = CheckpointStore(str(tmp_path / "j"))
    store.claim_attempt("run")
    for n in ids:
        m = manifest("r", 1)
        m.checkpoint_id, m.max_parallelism = n, max_parallelism
        from raystream._runtime.manifest import versions
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
