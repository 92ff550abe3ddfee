"""Restoring by step id: which old snapshots a new subtask reads and how their states merge,
across changes of parallelism and of chaining."""
import dataclasses

import pytest

from raystream._runtime.transport.keys import groups_of_subtask, key_group
from raystream._runtime.state.manifest import Manifest
from raystream._runtime.plan.physical import Chain
from raystream._runtime.checkpointing.rescale import check_matches, combine_writer_states, merge_states, snapshots_for
from raystream._runtime.state.snapshot import SinkState, SnapshotMeta, SubtaskState
from raystream._runtime.time.watermarks import GREATEST
import raystream as rs
from raystream.errors import RestoreError
from raystream.graph import Step
from raystream.sinks import CollectSink, FileSink, PrintSink

REDUCE, SINK = Step("r", "reduce", ("k",)), Step("out", "sink", ("r",))


def old_states(parallelism=2, chain="r+out"):
    """Snapshots of a keyed step chained to a sink; keys split by key group."""
    states = []
    for i in range(parallelism):
        groups = set(groups_of_subtask(i, parallelism, 128))
        table = {k: k * 10 for k in range(100) if key_group(k, 128) in groups}
        states.append(SubtaskState(7, chain, i, parallelism, keyed={"r": table},
                                   sinks={"out": SinkState([f"w{i}"], [(7, f"t{i}")])},
                                   counters={"r": (len(table), len(table)), "out": (len(table), 0)},
                                   audit={"sink:out": (len(table), i)}))
    return states


def manifest(chains: dict[str, int], state_steps=()) -> Manifest:
    metas = [SnapshotMeta(c, i, f"{c}{i}", "0" * 64, 1) for c, p in chains.items() for i in range(p)]
    return Manifest("j", "run", 7, 1, "exactly_once", 0.0, dict(chains), metas, state_steps=list(state_steps))


def test_same_parallelism_restores_its_own_snapshot_whole():
    states = old_states()
    merged = merge_states([states[1]], [REDUCE, SINK], 1, 2, 128)
    assert merged.keyed == states[1].keyed and merged.checkpoint_id == 7
    assert merged.sink_txns == {"out": ["t1"]} and merged.sink_states == {"out": [["w1"]]}
    assert merged.counters == states[1].counters


@pytest.mark.parametrize("new", [1, 3, 4])
def test_rescaling_carries_each_key_transaction_and_count_exactly_once(new):
    states = old_states(2)
    merged = [merge_states(states, [REDUCE, SINK], i, new, 128) for i in range(new)]
    assert sorted(k for m in merged for k in m.keyed["r"]) == list(range(100))
    for i, m in enumerate(merged):
        assert all(key_group(k, 128) in groups_of_subtask(i, new, 128) for k in m.keyed["r"])
    assert sorted(t for m in merged for t in m.sink_txns.get("out", [])) == ["t0", "t1"]  # each committed once
    assert sum(m.counters.get("r", (0, 0))[0] for m in merged) == 100
    assert sum(m.audit.get("sink:out", (0, 0))[0] for m in merged) == 100


def test_state_follows_step_ids_when_chaining_changes():
    # before: source and map chained, reduce chained to its sink; now every step alone
    old = manifest({"src+m": 2, "r+out": 2}, ["src", "r", "out"])
    src_chain = Chain(0, [Step("src", "source", ())], 2)
    reduce_chain = Chain(1, [REDUCE], 2)
    sink_chain = Chain(2, [SINK], 3)
    assert {(m.chain, m.subtask) for m in snapshots_for(old, src_chain, 1)} == {("src+m", 0), ("src+m", 1)}
    assert [(m.chain, m.subtask) for m in snapshots_for(old, reduce_chain, 1)] == [("r+out", 1)]
    assert len(snapshots_for(old, sink_chain, 0)) == 2  # another parallelism: every old subtask
    assert snapshots_for(old, Chain(3, [Step("new", "map", ("r",))], 2), 0) == []

    states = old_states(2)
    reduce_only = merge_states([states[1]], [REDUCE], 1, 2, 128)
    assert reduce_only.keyed == states[1].keyed and not reduce_only.sink_txns and "out" not in reduce_only.counters
    sink_only = [merge_states(states, [SINK], i, 3, 128) for i in range(3)]
    assert [m.sink_txns.get("out") for m in sink_only] == [["t0"], ["t1"], None] and not sink_only[0].keyed


def test_source_offsets_come_from_every_old_subtask_of_the_source():
    states = [SubtaskState(7, "src+m", i, 3, source_offsets={f"f{i}": i * 10}, counters={"src": (0, 10 + i)})
              for i in range(3)]
    src = Step("src", "source", ())
    merged = merge_states(states, [src], 1, 3, 128)
    assert merged.source_offsets == {"f0": 0, "f1": 10, "f2": 20}  # partitions continue wherever they go
    assert merged.counters == {"src": (0, 11)}  # its own counters only
    other = merge_states(states, [Step("other", "source", ())], 0, 3, 128)
    assert other.source_offsets == {}  # never another source's partitions


def test_dead_letters_move_to_the_chain_that_now_holds_their_step():
    states = [SubtaskState(7, "a+b", 0, 1, sinks={"dead_letters.a": SinkState(None, [(7, "dl")])},
                           counters={"dead_letters.a": (3, 0)})]
    merged = merge_states(states, [Step("x", "source", ()), Step("a", "map", ("x",))], 0, 1, 128)
    assert merged.sink_txns == {"dead_letters.x": ["dl"]} and merged.counters == {"dead_letters.x": (3, 0)}


def test_state_of_a_removed_step_is_refused_by_name_unless_allowed():
    old = manifest({"src": 1, "r+out": 1}, ["src", "r", "out"])
    check_matches(old, ["src", "k", "r", "out", "extra_map"], False)  # an added stateless step is fine
    with pytest.raises(RestoreError, match=r"state for steps out, r that this job does not have.*allow_non"):
        check_matches(old, ["src", "k", "r2", "out2"], False)
    check_matches(old, ["src", "k", "r2", "out2"], True)


def test_writer_states_combine_only_where_the_sink_knows_how():
    assert combine_writer_states(PrintSink(), "out", [None, None]) is None
    assert combine_writer_states(PrintSink(), "out", ["only"]) == "only"
    with pytest.raises(RestoreError, match="sink 'out' .*does not combine 2 of them"):
        combine_writer_states(PrintSink(), "out", ["a", "b"])
    rolling = FileSink("/x", roll_size=1 << 20)  # one writer takes over the open files of several
    assert combine_writer_states(rolling, "out", [{"in_progress": ["p0"]}, None, {"in_progress": ["p2"]}]) == \
        {"in_progress": ["p0", "p2"]}
    assert combine_writer_states(rolling, "out", [None, None]) is None
    assert combine_writer_states(CollectSink(), "out", [[1, 2], None, [3]]) == [1, 2, 3]
    assert combine_writer_states(CollectSink(keep="last"), "out", [{"a": 1}, {"b": 2}]) == {"a": 1, "b": 2}


def test_a_timed_step_restores_the_oldest_watermark_of_the_subtasks_it_takes_keys_from():
    states = old_states(2)
    states[0].watermarks, states[1].watermarks = {"r": 5_000}, {"r": 9_000}
    states[0].late, states[1].late = {"r": 2}, {"r": 3}
    same = merge_states([states[1]], [REDUCE, SINK], 1, 2, 128)
    assert same.watermarks == {"r": 9_000} and same.late == {"r": 3}
    merged = merge_states(states, [REDUCE, SINK], 0, 1, 128)
    assert merged.watermarks == {"r": 5_000} and merged.late == {"r": 5}


def test_a_timed_step_ignores_the_watermarks_of_old_subtasks_whose_keys_go_elsewhere():
    """Review 40: at 3 -> 2, new subtask 0 takes keys from old 0 and 1 only, yet started at
    old 2's watermark: older than any of its keys had seen, so more of their replayed records
    opened windows that had fired and been dropped."""
    states = old_states(3)
    for state, mark in zip(states, (1_000, 2_000, 50)):
        state.watermarks = {"r": mark}
    givers = [i for i in range(3) if set(groups_of_subtask(i, 3, 128)) & set(groups_of_subtask(0, 2, 128))]
    assert givers == [0, 1]
    assert merge_states(states, [REDUCE, SINK], 0, 2, 128).watermarks == {"r": 1_000}
    assert merge_states(states, [REDUCE, SINK], 1, 2, 128).watermarks == {"r": 50}


def test_key_groups_of_an_old_subtask_ahead_keep_its_watermark():
    """The known limit of 0.7.0: a window the subtask ahead had dropped was opened again by
    a record late there. Its key groups now keep its watermark, carried through snapshots
    and later rescales (the greatest a group had wins) until the step's passes it."""
    states = old_states(2)
    states[0].watermarks, states[1].watermarks = {"r": 5_000}, {"r": 9_000}
    merged = merge_states(states, [REDUCE, SINK], 0, 1, 128)
    assert merged.watermarks == {"r": 5_000}
    assert merged.group_watermarks == {"r": {g: 9_000 for g in groups_of_subtask(1, 2, 128)}}
    # restored at the same parallelism: its own, ahead of its step's
    again = SubtaskState(8, "r+out", 0, 1, keyed={"r": {}}, watermarks={"r": 6_000},
                         group_watermarks=merged.group_watermarks)
    assert merge_states([again], [REDUCE, SINK], 0, 1, 128).group_watermarks == merged.group_watermarks
    # 1 -> 3: each new subtask keeps those of its groups; one whose groups all came from old 0 none
    for i in range(3):
        mine = set(groups_of_subtask(i, 3, 128)) & set(groups_of_subtask(1, 2, 128))
        got = merge_states([again], [REDUCE, SINK], i, 3, 128).group_watermarks
        assert got == ({"r": {g: 9_000 for g in mine}} if mine else {})
    # a group's own watermark from before wins over its old subtask's when greater, and
    # those the step's watermark has passed are let go
    states[0].group_watermarks = {"r": {0: 12_000}}
    states[1].group_watermarks = {"r": {64: 3_000}}  # passed by old 1's own watermark
    merged = merge_states(states, [REDUCE, SINK], 0, 1, 128)
    assert merged.group_watermarks["r"][0] == 12_000 and merged.group_watermarks["r"][64] == 9_000
    states[0].watermarks = {"r": 9_000}
    merged = merge_states(states, [REDUCE, SINK], 0, 1, 128)
    assert merged.group_watermarks == {"r": {0: 12_000}}
    # a checkpoint of 0.7.0 has none
    old = SubtaskState(7, "r+out", 0, 1, keyed={"r": {}}, watermarks={"r": 1})
    del old.__dict__["group_watermarks"]
    assert merge_states([old], [REDUCE, SINK], 0, 1, 128).group_watermarks == {}


def test_an_event_time_step_restores_the_oldest_time_of_every_old_subtask():
    """Its own newest time ("") belongs to whichever inputs the subtask had, which may go to
    another subtask when partitions come or go (round-robin) or the parallelism changes: a
    newer time restored to a subtask that now reads older records would make them late.
    So every new subtask restores the oldest time of all old subtasks of the step, and
    none when an old subtask had seen no record (it held the watermark at the minimum)."""
    src, et = Step("src", "source", ()), Step("et", "event_time", ("src",))
    chain = Chain(0, [src, et], 2)
    m = manifest({"src+et": 2})
    old = [SubtaskState(7, "src+et", 0, 2, source_offsets={"a": 5, "c": 5}, event_times={"et": {"": 100_000}}),
           SubtaskState(7, "src+et", 1, 2, source_offsets={"b": 5}, event_times={"et": {"": 1_000}})]
    for i in range(2):
        metas = snapshots_for(m, chain, i)
        assert {meta.subtask for meta in metas} == {0, 1}
        assert merge_states([old[meta.subtask] for meta in metas], [src, et], i, 2, 128).event_times == \
            {"et": {"": 1_000}}
    old[1].event_times = {"et": {}}  # it had seen no record
    assert merge_states(old, [src, et], 0, 1, 128).event_times == {}
    # ... unless it would have gone idle: then the others held the watermark (review of stop 36)
    idling = dataclasses.replace(et, event_time=rs.EventTime(lambda r: r, idle_after=5))
    assert merge_states(old, [src, idling], 0, 1, 128).event_times == {"et": {"": 100_000, GREATEST: 100_000}}
    # every new subtask knows the newest of them all too: idle, it goes there, as they would have
    old[1].event_times = {"et": {"": 1_000}}
    assert merge_states(old, [src, idling], 0, 1, 128).event_times == {"et": {"": 1_000, GREATEST: 100_000}}
    after = Chain(1, [et], 2)  # unchained, after a shuffle: the same
    metas = snapshots_for(manifest({"et": 2}), after, 0)
    assert {meta.subtask for meta in metas} == {0, 1}
