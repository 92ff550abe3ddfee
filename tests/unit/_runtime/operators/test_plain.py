"""Operators apply user functions to whole batches and name the record that fails."""
import operator

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from raystream._runtime.transport.batch import KeyedBatch, Timed, as_records
from raystream._runtime.operators.plain import build_operator
from raystream._runtime.operators.base import run_chain
from raystream._runtime.plan.failure import RecordFailure
from raystream.graph import Step
from raystream.sinks import CollectSink, SinkContext


def op(kind, fn=None, **kw):
    return build_operator(Step("s", kind, ("in",), fn=fn, **kw))


def test_stateless_operators():
    assert op("map", lambda x: x * 2).process([1, 2]) == [2, 4]
    assert op("flat_map", lambda x: [x] * x).process([1, 2]) == [1, 2, 2]
    assert op("filter", lambda x: x % 2).process([1, 2, 3]) == [1, 3]
    kb = op("key_by", lambda x: x % 2, value_fn=lambda x: 1).process([1, 2, 3])
    assert as_records(kb) == [(1, 1), (0, 1), (1, 1)]
    assert as_records(op("key_by", str).process([7])) == [("7", 7)]


def test_reduce_emits_every_update_and_keeps_state_per_key():
    r = op("reduce", operator.add)
    assert as_records(r.process(KeyedBatch(["a", "b", "a"], [1, 10, 2]))) == [("a", 1), ("b", 10), ("a", 3)]
    assert as_records(r.process([("a", 5)])) == [("a", 8)]
    assert r.snapshot() == {"a": 8, "b": 10}
    assert (r.records_in, r.records_out) == (4, 4)


def test_stateful_map_deletes_state_on_none():
    def session(state, value):
        total = (state or 0) + value
        return (None, ("closed", total)) if value == 0 else (total, ("open", total))

    sm = op("stateful_map", session)
    out = as_records(sm.process([("u", 3), ("u", 4), ("u", 0), ("u", 1)]))
    assert out == [("u", ("open", 3)), ("u", ("open", 7)), ("u", ("closed", 7)), ("u", ("open", 1))]
    assert sm.snapshot() == {"u": 1}


def test_map_batches_takes_and_returns_arrow():
    mb = op("map_batches", lambda b: b.append_column("y", pc.multiply(b.column(0), 2)))
    out = mb.process([{"x": 1}, {"x": 2}])
    assert out.to_pylist() == [{"x": 1, "y": 2}, {"x": 2, "y": 4}]
    scalar = op("map_batches", lambda b: pa.table({"v": b.column("value")})).process([5, 6])
    assert scalar.to_pylist() == [{"v": 5}, {"v": 6}]


def test_map_batches_must_return_arrow():
    with pytest.raises(RecordFailure, match="must return a pyarrow RecordBatch"):
        op("map_batches", lambda b: b.to_pylist()).process([{"x": 1}])


def test_a_failing_record_is_named_with_its_traceback():
    def fragile(x):
        if x == 13:
            raise ValueError("unlucky")
        return x

    with pytest.raises(RecordFailure) as info:
        op("map", fragile).process(list(range(20)))
    assert info.value.step_id == "s"
    assert info.value.record_repr == "13"
    assert "ValueError: unlucky" in info.value.error
    assert "in fragile" in info.value.traceback_text


def test_long_records_are_truncated_in_errors():
    with pytest.raises(RecordFailure) as info:
        op("map", lambda x: 1 / 0).process(["x" * 1000])
    assert len(info.value.record_repr) == 200 and info.value.record_repr.endswith("...")


def test_reduce_failure_names_key_and_value():
    with pytest.raises(RecordFailure) as info:
        op("reduce", lambda a, b: a + b).process([("k", 1), ("k", "two")])
    assert info.value.record_repr == "('k', 'two')"


def test_keyed_step_rejects_records_that_are_not_pairs():
    with pytest.raises(RecordFailure, match=r"\(key, value\) records"):
        op("reduce", operator.add).process([1, 2])


def test_chain_runs_steps_in_order_into_a_sink():
    ops = [op("map", lambda x: x + 1), op("filter", lambda x: x % 2),
           build_operator(Step("out", "sink", ("in",), sink=CollectSink()), SinkContext("out", 0, 1))]
    assert run_chain(ops, [1, 2, 3, 4]) == []
    assert ops[-1].close() == [3, 5]


def test_with_an_error_policy_failing_records_are_handed_over_and_the_rest_go_on():
    failed = []

    def on_error(step_id, record, exc):
        failed.append((step_id, record, type(exc).__name__))

    def inverse(x):
        return 1 / x

    m = op("map", inverse)
    m.on_error = on_error
    assert m.process([1, 0, 2, 0]) == [1.0, 0.5]
    assert failed == [("s", 0, "ZeroDivisionError")] * 2 and m.errors == 2

    failed.clear()
    r = op("reduce", lambda a, b: a + b)
    r.on_error = on_error
    out = r.process([("k", 1), ("k", "x"), ("j", 5), ("k", 2), ("k", None)])
    assert as_records(out) == [("k", 1), ("j", 5), ("k", 3)]  # state skips the bad values
    assert [f[1] for f in failed] == [("k", "x"), ("k", None)] and r.snapshot() == {"k": 3, "j": 5}

    failed.clear()
    sm = op("stateful_map", lambda s, v: ((s or 0) + v, v * 2))
    sm.on_error = on_error
    assert as_records(sm.process([("a", 1), ("a", "bad"), ("b", 2)])) == [("a", 2), ("b", 4)]
    assert failed[0][1] == ("a", "bad")

    failed.clear()
    mb = op("map_batches", lambda b: 1 / 0)
    mb.on_error = on_error
    assert mb.process([{"x": 1}, {"x": 2}]) == [] and [f[1] for f in failed] == [{"x": 1}, {"x": 2}]


def test_on_a_stream_with_event_time_outputs_keep_their_records_times():
    def run(o, records, times):
        out = o.process(Timed(records, times))
        return out.batch, out.times

    assert run(op("map", lambda x: x * 2), [1, 2], [10, 20]) == ([2, 4], [10, 20])
    assert run(op("flat_map", lambda x: [x] * x), [0, 1, 2], [5, 10, 20]) == ([1, 2, 2], [10, 20, 20])
    assert run(op("filter", lambda x: x % 2), [1, 2, 3], [10, 20, 30]) == ([1, 3], [10, 30])
    kb, times = run(op("key_by", str), [7, 8], [1, 2])
    assert as_records(kb) == [("7", 7), ("8", 8)] and times == [1, 2]


def test_flat_map_with_a_failing_record_under_a_policy_keeps_the_others_and_their_times():
    def explode(x):
        if x == 0:
            raise ValueError("zero")
        return range(x)

    fm = op("flat_map", explode)
    fm.on_error = lambda *_: None
    out = fm.process(Timed([2, 0, 1], [10, 20, 30]))
    assert (out.batch, out.times) == ([0, 1, 0], [10, 10, 30]) and fm.errors == 1
