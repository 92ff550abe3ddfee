"""The mini-batch reduce (`emit="last"`): each key's last update per micro-batch, the same
final values as the default mode, with event time and under the error policies."""
from __future__ import annotations

import operator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import raystream as rs
from raystream._runtime.operators.plain import build_operator
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.transport.batch import KeyedBatch, Timed, as_records, untimed
from raystream.errors import JobDefinitionError
from raystream.graph import Step, StepKind


def reducer(emit: str, fn: Any = operator.add) -> Any:
    return build_operator(Step("r", StepKind.REDUCE, ("in",), fn=fn, emit=emit))


def last_per_key(records: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """The default mode's output of one batch less each key's earlier updates."""
    last = {k: i for i, (k, _) in enumerate(records)}
    return [r for i, r in enumerate(records) if last[r[0]] == i]


batches = st.lists(st.lists(st.tuples(st.sampled_from("abcde"), st.integers(-5, 5)), max_size=12), max_size=6)


@settings(max_examples=60, deadline=None)
@given(batches)
def test_last_emits_the_default_output_less_earlier_updates_and_ends_with_the_same_values(batches):
    every, last = reducer("every"), reducer("last")
    final_every: dict[Any, Any] = {}
    final_last: dict[Any, Any] = {}
    for batch in batches:
        out_every = as_records(every.process(KeyedBatch([k for k, _ in batch], [v for _, v in batch])))
        out_last = as_records(last.process(list(batch)))
        assert out_last == last_per_key(out_every)
        final_every.update(out_every)
        final_last.update(out_last)
    assert final_last == final_every == every.snapshot() == last.snapshot()
    assert last.records_in == every.records_in == sum(map(len, batches))
    assert last.records_out == sum(len({k for k, _ in b}) for b in batches)


def test_last_tracks_the_new_values_of_the_keys_it_changed_for_incremental_snapshots():
    r = reducer("last")
    r.process([("a", 1), ("b", 2), ("a", 3)])
    assert r.written == {"a": 4, "b": 2}
    r.written = {}  # what a snapshot does (changelog.py, I1)
    r.process([("b", 5)])
    assert r.written == {"b": 7} and r.snapshot() == {"a": 4, "b": 7}


def test_with_event_time_each_value_keeps_the_time_of_its_keys_last_record():
    r = reducer("last")
    out = r.process(Timed(KeyedBatch(["a", "b", "a", "c", "b"], [1, 2, 3, 4, 5]), [10, 20, 30, 40, 15]))
    assert isinstance(out, Timed)
    batch, times = untimed(out)
    assert as_records(batch) == [("a", 4), ("c", 4), ("b", 7)]
    assert times == [30, 40, 15]  # b's last record came at 15, though 20 was later in time


def test_under_an_error_policy_a_failing_record_loses_only_itself():
    def add(acc: Any, value: Any) -> Any:
        if value == "bad":
            raise ValueError("bad value")
        return acc + value

    failed: list[Any] = []
    outs = {}
    for emit in ("every", "last"):
        r = reducer(emit, add)
        r.on_error = lambda step_id, record, exc: failed.append((emit, record))
        batch = Timed(KeyedBatch(["a", "a", "b", "a", "c", "a", "b"], [1, 2, 5, "bad", "bad", 4, "bad"]),
                      [1, 2, 3, 4, 5, 6, 7])
        outs[emit] = r.process(batch)
        assert r.snapshot() == {"a": 7, "b": 5, "c": "bad"} and r.errors == 2
    every, every_times = untimed(outs["every"])
    last, last_times = untimed(outs["last"])
    # the first value of a key is its acc: no call of fn, so c's "bad" does not fail
    assert as_records(every) == [("a", 1), ("a", 3), ("b", 5), ("c", "bad"), ("a", 7)]
    assert every_times == [1, 2, 3, 5, 6]
    assert as_records(last) == [("b", 5), ("c", "bad"), ("a", 7)] and last_times == [3, 5, 6]
    assert dict(as_records(last)) == dict(as_records(every))  # the same final value per key
    assert [rec for emit, rec in failed if emit == "last"] == [("a", "bad"), ("b", "bad")]
    assert [rec for emit, rec in failed if emit == "every"] == [("a", "bad"), ("b", "bad")]


def test_a_key_whose_only_records_failed_emits_nothing():
    r = reducer("last", lambda acc, value: acc + value)
    r.process([("k", 1)])
    r.on_error = lambda *_: None
    out = as_records(r.process([("k", "x"), ("j", 2), ("k", None)]))
    assert out == [("j", 2)] and r.written == {"k": 1, "j": 2} and r.snapshot() == {"k": 1, "j": 2}


def test_without_a_policy_the_first_failing_record_stops_the_step():
    with pytest.raises(RecordFailure) as info:
        reducer("last", lambda acc, value: acc + value).process([("k", 1), ("k", "two")])
    assert info.value.record_repr == "('k', 'two')"


def test_the_api_takes_every_or_last():
    job = rs.Job("j")
    keyed = job.source("n", rs.sources.SequenceSource(3)).key_by("k", lambda x: x % 2)
    keyed.reduce("default", operator.add)
    keyed.reduce("mini", operator.add, emit="last")
    assert job.steps["default"].emit == "every" and job.steps["mini"].emit == "last"
    with pytest.raises(JobDefinitionError, match='emit="every" or emit="last"'):
        keyed.reduce("bad", operator.add, emit="first")


# --- combine=True: the key_by folds each batch before the shuffle ---------------------------

def key_by_folding(fn: Any = operator.add) -> Any:
    return build_operator(Step("k", StepKind.KEY_BY, ("in",), fn=operator.itemgetter(0),
                               value_fn=operator.itemgetter(1), fold=fn))


@settings(max_examples=60, deadline=None)
@given(batches)
def test_a_folded_batch_reduced_emits_what_the_unfolded_one_does_in_the_mini_batch_mode(batches):
    plain, folded = reducer("last"), reducer("last")
    key_by = key_by_folding()
    for batch in batches:
        out_plain = as_records(plain.process(KeyedBatch([k for k, _ in batch], [v for _, v in batch])))
        crossing = key_by.process(list(batch))
        assert len(crossing.keys) == len({k for k, _ in batch})  # one record per key crosses
        assert as_records(folded.process(crossing)) == out_plain  # same values, same order
    assert folded.snapshot() == plain.snapshot()


def test_a_fold_that_fails_sends_the_batch_unfolded_so_the_reduce_applies_its_policy():
    key_by = key_by_folding(lambda acc, value: acc + value)
    out = key_by.process([("k", 1), ("j", 2), ("k", "two")])
    assert (out.keys, out.values) == (["k", "j", "k"], [1, 2, "two"])
    with pytest.raises(RecordFailure) as info:
        reducer("last", lambda acc, value: acc + value).process(out)
    assert info.value.record_repr == "('k', 'two')"  # the record it blames without combine


def test_records_with_event_time_are_not_folded():
    key_by = key_by_folding()
    out, times = untimed(key_by.process(Timed([("a", 1), ("a", 2)], [10, 20])))
    assert (out.keys, out.values, times) == (["a", "a"], [1, 2], [10, 20])


def test_combine_needs_the_mini_batch_mode_and_folds_only_a_key_by_of_its_own():
    from raystream._runtime.plan.physical import build_plan

    job = rs.Job("j", parallelism=2)
    keyed = job.source("n", rs.sources.SequenceSource(3)).key_by("k", lambda x: x % 2)
    with pytest.raises(JobDefinitionError, match='pass emit="last" with it'):
        keyed.reduce("bad", operator.add, combine=True)
    keyed.reduce("sum", operator.add, emit="last", combine=True).sink("o", rs.sinks.CollectSink())
    shared = job.source("m", rs.sources.SequenceSource(3)).key_by("k2", lambda x: x % 2)
    shared.reduce("sum2", operator.add, emit="last", combine=True).sink("o2", rs.sinks.CollectSink())
    shared.map("other", lambda kv: kv).sink("o3", rs.sinks.CollectSink())  # sees every record: no fold
    plan = build_plan(job.freeze(), {"n": ["0"], "m": ["0"]})
    folds = {s.step_id: s.fold for c in plan.chains for s in c.steps if s.kind is StepKind.KEY_BY}
    assert folds == {"k": operator.add, "k2": None}
