"""Recovery: restored state is merged per key group and source partition; restarts back off."""
import pytest

from raystream import RestartStrategy
from raystream._runtime.checkpoint import Manifest, SinkState, SnapshotMeta, SubtaskState
from raystream._runtime.keys import groups_of_subtask, key_group
from raystream._runtime.plan import Chain
from raystream._runtime.recovery import RestartTracker, RestoreError, merge_states, snapshots_for
from raystream.errors import JobFailedError
from raystream.job import Step


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
    with pytest.raises(RestoreError, match="keep the sink's parallelism"):
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
