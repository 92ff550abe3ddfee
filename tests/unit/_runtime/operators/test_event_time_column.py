"""Event time from a column (`EventTime.column`) without Ray: an Arrow batch keeps its rows
and gets its times as an array in one conversion, equal to what the same values give per
record; the watermark generator sees the same newest times per partition; rows without a
time fail one by one; per-record records are read by field."""
from __future__ import annotations

import collections
import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import raystream as rs
from raystream._runtime.operators.event_time import AssignTimeOp, column_millis
from raystream._runtime.operators.plain import build_operator
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.time.watermarks import WatermarkGenerator
from raystream._runtime.transport.batch import ArrowKeyed, Timed, untimed
from raystream.errors import JobDefinitionError
from raystream.graph import Step, StepKind


def stamper(event_time, partitions=("p0", "p1")) -> AssignTimeOp:
    step = Step("src", StepKind.SOURCE, (), event_time=event_time)
    return AssignTimeOp(step, event_time, WatermarkGenerator(event_time, list(partitions)))


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.integers(-2**40, 2**40), min_size=1, max_size=20),
       floats=st.lists(st.floats(-1e9, 1e9, allow_nan=False), min_size=1, max_size=20))
def test_a_column_converts_as_the_same_values_do_one_by_one(unit, values, floats):
    column = rs.EventTime.column("t", unit=unit).time_column
    for array in (pa.array(values, pa.int64()), pa.array(values, pa.int32()) if abs(max(values, key=abs)) < 2**31
                  else pa.array(values), pa.array(floats, pa.float64())):
        millis, valid = column_millis(pa.RecordBatch.from_pydict({"t": array}), "t", unit)
        assert valid is None and millis.dtype == np.int64
        assert millis.tolist() == [column.millis(v) for v in array.to_pylist()]


def test_arrow_timestamps_in_any_unit_and_time_zone_are_their_utc_milliseconds():
    when = [dt.datetime(2026, 1, 1, 12, 0, 0, 123_456, tzinfo=dt.timezone.utc), None]
    for kind in (pa.timestamp("s", "UTC"), pa.timestamp("ms"), pa.timestamp("us", "Europe/Paris"), pa.timestamp("ns")):
        array = pa.array(when, pa.timestamp("us", "UTC")).cast(kind, safe=False)
        millis, valid = column_millis(pa.RecordBatch.from_pydict({"t": array}), "t", "ms")
        column = rs.EventTime.column("t").time_column
        assert millis[0] == column.millis(array[0].as_py()) and valid.tolist() == [True, False]


def test_an_arrow_batch_keeps_its_rows_and_gets_its_times_as_an_array():
    op = stamper(rs.EventTime.column("date_time", max_delay=2))
    batch = pa.RecordBatch.from_pydict({"auction": [1, 2, 1], "date_time": [5_000, 9_000, 7_000]})
    op.partition = "p0"
    out = op.process(batch)
    assert isinstance(out, Timed) and out.batch is batch and out.times.tolist() == [5_000, 9_000, 7_000]
    op.partition = "p1"
    keyed = op.process(ArrowKeyed(batch.slice(0, 1), ("auction",)))
    assert isinstance(keyed.batch, ArrowKeyed) and keyed.times.tolist() == [5_000]
    assert op.generator.snapshot() == {"p0": 9_000, "p1": 5_000}  # the newest per partition, as per record
    assert op.generator.watermark() == 5_000 - 2_000 - 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(["p0", "p1"]), st.integers(0, 10**6)), max_size=10), max_size=6))
def test_watermarks_are_those_of_the_same_times_per_record(batches):
    columnar = stamper(rs.EventTime.column("t", max_delay=0.5, idle_after=None))
    records = stamper(rs.EventTime(lambda r: r["t"] / 1000, max_delay=0.5))
    for rows in batches:
        for partition in ("p0", "p1"):
            mine = [{"t": t} for p, t in rows if p == partition]
            if mine:
                columnar.partition = records.partition = partition
                a = columnar.process(pa.RecordBatch.from_pylist(mine))
                b = records.process(mine)
                assert a.times.tolist() == b.times
        assert columnar.generator.watermark(0) == records.generator.watermark(0)
        assert columnar.event_times() == records.event_times()


def test_rows_without_a_time_fail_one_by_one_and_the_others_go_on():
    op = stamper(rs.EventTime.column("t", unit="s"))
    failed = []
    op.on_error = lambda step, record, exc: failed.append((record, str(exc)))
    batch = pa.RecordBatch.from_pydict({"k": ["a", "b", "c", "d"], "t": [1.0, None, float("nan"), 2.5]})
    out = op.process(batch)
    assert out.batch.column("k").to_pylist() == ["a", "d"] and out.times.tolist() == [1_000, 2_500]
    assert [r["k"] for r, _ in failed] == ["b", "c"]
    assert "holds None, not a time" in failed[0][1]
    with pytest.raises(RecordFailure, match="event time from column 't' failed on a batch with columns k, s.*no event"):
        stamper(rs.EventTime.column("t")).process(pa.RecordBatch.from_pydict({"k": [1], "s": [2]}))
    with pytest.raises(RecordFailure, match="is string; it takes integers or floats in ms"):
        stamper(rs.EventTime.column("t")).process(pa.RecordBatch.from_pydict({"t": ["soon"]}))


def test_per_record_records_are_read_by_field_with_the_same_milliseconds():
    Bid = collections.namedtuple("Bid", "auction date_time")
    op = stamper(rs.EventTime.column("date_time"))
    assert op.process([Bid(1, 1_500), Bid(2, 2_700)]).times == [1_500, 2_700]
    assert op.process([{"date_time": dt.datetime(1970, 1, 1, 0, 0, 3)}]).times == [3_000]  # naive: UTC, as Arrow
    assert rs.EventTime.column("date_time").timestamp_fn({"date_time": 1_500}) == dt.datetime(1970, 1, 1, 0, 0, 1, 500_000,
                                                                                 tzinfo=dt.timezone.utc)
    with pytest.raises(RecordFailure, match="'date_time'"):
        op.process([{"other": 1}])


def test_a_per_record_step_after_a_columnar_one_gets_its_times_as_a_list():
    op = build_operator(Step("m", StepKind.MAP, ("in",), fn=lambda r: r["k"]))
    out = op.process(Timed(pa.RecordBatch.from_pydict({"k": ["a", "b"]}), np.array([1, 2])))
    assert untimed(out) == (["a", "b"], [1, 2]) and type(out.times[0]) is int


@pytest.mark.parametrize("build, message", [
    (lambda: rs.EventTime.column(""), "the column must be a column name"),
    (lambda: rs.EventTime.column("t", unit="min"), "unit must be one of s, ms, us, ns"),
    (lambda: rs.EventTime.column("t", max_delay=-1), "max_delay must be at least 0"),
])
def test_column_mistakes_are_refused_when_defined(build, message):
    with pytest.raises(JobDefinitionError, match=message):
        build()


def test_a_time_function_keeps_an_arrow_batch_as_it_is_and_only_reads_its_rows():
    """Review: `EventTime(fn)` made an Arrow batch Python dicts, and the next columnar
    step made them Arrow again with types inferred per batch: int32 became int64, a
    column of nulls changed type, timestamps lost their unit."""
    seen = []

    def when(record):
        seen.append(record)
        if record["t"] is None:
            raise ValueError("no time")
        return record["t"] / 1000

    op = stamper(rs.EventTime(when))
    failed = []
    op.on_error = lambda step, record, exc: failed.append(record)
    op.partition = "p0"
    batch = pa.RecordBatch.from_pydict({
        "t": pa.array([1_000, None, 3_000], pa.int32()), "n": pa.nulls(3),
        "at": pa.array([1, 2, 3], pa.timestamp("us", "UTC")),
        "d": pa.array(["x", "y", "x"]).dictionary_encode(), "u": pa.array([2**64 - 1, 0, 1], pa.uint64())})
    out = op.process(batch)
    assert isinstance(out, Timed) and out.batch.schema == batch.schema
    assert out.batch.to_pylist() == [batch.to_pylist()[0], batch.to_pylist()[2]] and out.times.tolist() == [1_000, 3_000]
    assert seen[-3:] == batch.to_pylist() and failed == [batch.to_pylist()[1]]  # replayed one by one after the failure
    assert op.generator.snapshot() == {"p0": 3_000}
    whole = op.process(batch.slice(0, 1))
    assert whole.batch.schema == batch.schema and whole.times.dtype == np.int64
    op = stamper(rs.EventTime(lambda key_row: key_row[1]["t"] / 1000))  # (key, row): as per record
    keyed = op.process(ArrowKeyed(batch.filter(pa.array([True, False, True])), ("d",)))
    assert isinstance(keyed.batch, ArrowKeyed) and keyed.batch.key_columns == ("d",)
    assert keyed.batch.batch.schema == batch.schema and keyed.times.tolist() == [1_000, 3_000]


def test_a_time_too_far_from_1970_for_milliseconds_is_a_row_without_a_time_not_wrapped():
    """Review 47: seconds times 1000 wrapped past int64 to another time (about 292 million
    years before 1970 came out far after it; a float came out as the watermark's minimum).
    Such a row fails on its own, as a row without a time does; the others go on."""
    cases = [(pa.array([1, 2 ** 60, 2], pa.int64()), "s"),
             (pa.array([1.0, 1e17, 2.0], pa.float64()), "s"), (pa.array([1.0, -1e19, 2.0], pa.float64()), "ms")]
    for array, unit in cases:
        times, valid = column_millis(pa.RecordBatch.from_pydict({"t": array}), "t", unit)
        assert valid.tolist() == [True, False, True], (array.type, unit)
        assert times[0] in (1, 1000) and times[2] in (2, 2000)
    near, valid = column_millis(pa.RecordBatch.from_pydict({"t": pa.array([-(2 ** 53), 2 ** 53], pa.timestamp("s"))}),
                                "t", "ms")
    assert valid is None and near.tolist() == [-(2 ** 53) * 1000, 2 ** 53 * 1000]
    # in a step: the far row fails on its own, the others go on
    op = stamper(rs.EventTime.column("t", unit="s"))
    failed = []
    op.on_error = lambda step, record, exc: failed.append((record, str(exc)))
    out = op.process(pa.RecordBatch.from_pydict({"k": ["a", "b", "c"], "t": pa.array([1, -(2 ** 60), 2])}))
    assert out.batch.column("k").to_pylist() == ["a", "c"] and out.times.tolist() == [1_000, 2_000]
    assert [r["k"] for r, _ in failed] == ["b"] and "not a time within about 292 million years" in failed[0][1]
    # a timestamp that far has no Python value either: its batch fails, as such values do elsewhere
    far = pa.RecordBatch.from_pydict({"t": pa.array([1, -(2 ** 60)], pa.timestamp("s"))})
    with pytest.raises(ValueError, match="about 292 million years or more from 1970"):
        column_millis(far, "t", "ms")
