"""State time-to-live without Ray, across checkpoints: a removal is a deletion in the next
incremental snapshot; restore (also from and into a step without a TTL) and rescale."""
from __future__ import annotations

import operator
import pickle

import pytest

import raystream as rs
from raystream._runtime.checkpointing.rescale import merge_states
from raystream._runtime.operators import ttl as ttl_ops
from raystream._runtime.state.changelog import apply_part
from raystream._runtime.state.snapshot import SubtaskState, decode, encode
from raystream._runtime.transport.keys import groups_of_subtask, key_group
from raystream.graph import Step, StepKind
from tests.helpers.keyed import feed
from tests.helpers.ttl import KINDS, TTL_MS, TTL_S, changelog_after_full, op_of, values, wall_clock


@pytest.mark.parametrize("kind", KINDS)
def test_a_removal_is_a_deletion_in_the_next_incremental_snapshot(kind):
    op = op_of(kind, TTL_S)
    feed(op, [("a", 1, 1_000), ("b", 2, 4_000)])
    log = changelog_after_full(op)
    base = {op.step_id: dict(pickle.loads(pickle.dumps(op.state)))}
    feed(op, [("b", 3, 5_000)])
    op.on_watermark(6_000)  # a expires; b lives, written again at 5 s
    keyed, changes, _ = log.capture([op])
    assert changes
    updates, deleted = keyed[op.step_id]
    assert list(deleted) == ["a"] and set(updates) == {"b"}
    # the parts read back hold exactly the live state, with its times
    data, sha = encode(keyed)
    apply_part(base, decode(data, sha, "changes"), False)
    table = base[op.step_id]
    assert set(table) == {"b"} and table["b"].touched == 5_000
    assert getattr(table["b"], "value") == op.state["b"].value


@pytest.mark.parametrize("kind", KINDS)
def test_restore_after_expiry_and_expiry_after_a_restore(kind):
    op = op_of(kind, TTL_S)
    feed(op, [("a", 1, 1_000), ("b", 2, 4_000)])
    op.on_watermark(6_000)
    snapshot = pickle.loads(pickle.dumps(op.snapshot()))
    restored = op_of(kind, TTL_S)
    restored.restore_meta([op.state_meta()])
    restored.restore(snapshot, op.watermark)
    assert set(restored.state) == {"b"}
    assert restored.state["b"].touched == 4_000  # its time came along: it expires when it would have
    restored.on_watermark(8_999)
    assert set(restored.state) == {"b"}
    restored.on_watermark(9_000)
    assert restored.state == {}
    assert feed(restored, [("a", 5, 9_500)]) == ([("a", 5)] if kind == "reduce" else [("a", None)])


def test_restoring_state_without_ttl_counts_it_as_written_at_the_restore():
    plain = op_of("reduce")
    feed(plain, [("a", 1, 1_000)])
    # processing time: the wall clock at the restore; the next snapshot holds the entries
    with wall_clock(100_000) as clock:
        op = op_of("reduce", TTL_S, "processing")
        op.restore_meta([])
        op.restore(pickle.loads(pickle.dumps(plain.snapshot())), None)
        assert op.state["a"].touched == 100_000 and op.next_timer() == 105_000
        assert set(op.written) == {"a"}
        clock[0] = 105_000
        op.on_time(105_000)
        assert op.state == {}
    # event time: the first watermark after the restore
    op = op_of("reduce", TTL_S)
    op.restore_meta([])
    op.restore(pickle.loads(pickle.dumps(plain.snapshot())), None)
    assert feed(op, [("a", 1, 2_000)]) == [("a", 2)]  # read before any watermark: there
    op2 = op_of("stateful_map", TTL_S)
    op2.restore({"x": 7}, None)
    op2.on_watermark(50_000)
    assert op2.state["x"].touched == 50_000 and "x" in op2.written
    op2.on_watermark(55_000)
    assert op2.state == {}


@pytest.mark.parametrize("kind", KINDS)
def test_a_step_without_ttl_takes_the_state_of_one_with_it_as_plain_values(kind):
    op = op_of(kind, TTL_S)
    feed(op, [("a", 1, 1_000)])
    plain = op_of(kind)
    plain.restore_meta([op.state_meta()])
    plain.restore(pickle.loads(pickle.dumps(op.snapshot())), None)
    assert values(plain) == {"a": 1}
    assert pickle.loads(pickle.dumps(plain.snapshot())) == {"a": 1} if kind != "process" else \
        plain.state["a"].touched is None
    # the next incremental snapshot rewrites the key as a plain value
    assert ("a" in plain.written) if plain.written is not None else ("a" in plain.changed)
    second = feed(plain, [("a", 2, 100_000)])
    assert second == [("a", 3)] if kind == "reduce" else second == [("a", 1)]  # no TTL any more


def test_a_ttl_of_another_clock_counts_the_state_as_written_at_the_restore():
    op = op_of("reduce", TTL_S)  # event time: touched is an event time
    feed(op, [("a", 1, 1_000)])
    with wall_clock(900_000):
        restored = op_of("reduce", TTL_S, "processing")
        restored.restore_meta([op.state_meta()])
        restored.restore(pickle.loads(pickle.dumps(op.snapshot())), None)
        assert restored.state["a"].touched == 900_000


def test_rescaling_splits_ttl_state_by_key_group_and_each_part_expires_on_its_own():
    op = op_of("reduce", TTL_S)
    keys = list(range(40))
    feed(op, [(k, 1, 1_000 + 100 * k) for k in keys])
    op.on_watermark(1_000)
    old = SubtaskState(3, "reduce", 0, 1, keyed={"reduce": op.snapshot()}, watermarks={"reduce": op.watermark},
                       step_meta={"reduce": op.state_meta()})
    old = pickle.loads(pickle.dumps(old))
    step = Step("reduce", StepKind.REDUCE, ("k",), fn=operator.add, ttl=rs.TTL(TTL_S))
    parts = []
    for subtask in range(2):
        merged = merge_states([old], [step], subtask, 2, 128)
        new = ttl_ops.TtlReduceOp(step)
        new.restore_meta(merged.step_meta.get("reduce", []))
        new.restore(merged.keyed.get("reduce", {}), merged.watermarks.get("reduce"))
        groups = set(groups_of_subtask(subtask, 2, 128))
        assert all(key_group(k, 128) in groups for k in new.state)
        parts.append(new)
    assert sorted(k for p in parts for k in p.state) == keys
    for p in parts:
        p.on_watermark(1_000 + 100 * 20 + TTL_MS)  # keys 0..20 expire
        assert all(k > 20 for k in p.state)
    assert sorted(k for p in parts for k in p.state) == list(range(21, 40))


