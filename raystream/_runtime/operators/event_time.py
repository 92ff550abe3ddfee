"""`AssignTimeOp`: the operator that stamps each record with its event time and feeds the
watermark generator (time/watermarks.py; docs/event_time.md).

With `EventTime(fn)` the function runs per record; an Arrow batch (a RecordBatch, or
rows keyed by columns) stays the batch it is, its column types untouched: only the
function sees its rows as Python records (a dict per row; `(key, row)` for rows keyed
by columns), and its times travel beside it as an int64 array (`Timed`). With
`EventTime.column(name, unit)` an Arrow batch gets that array from the column in one
vectorized conversion (`column_millis`); the generator takes the array's max per source
partition, as it takes a list's. Other records are read field by field
(`ColumnTime.of_record`), giving the same milliseconds. A row whose time is null or not
a finite number fails on its own, as its record would on the per-record path; a column
that is missing or of a type that is not a time fails the whole batch.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from raystream._runtime.operators.base import Operator
from raystream._runtime.operators.columnar import explained
from raystream._runtime.time.watermarks import WatermarkGenerator
from raystream._runtime.transport.batch import ArrowKeyed, Timed, as_records, untimed
from raystream.event_time import UNITS, EventTime, to_millis
from raystream.graph import Step, StepKind

TIMESTAMP_DIVISORS = {"s": -1000, "ms": 1, "us": 1000, "ns": 1_000_000}  # -n: multiply by n


#: The furthest time from 1970 in milliseconds that a row may have (about 292 million
#: years): a time in seconds past it would wrap int64 (review 47) into some other time.
_FURTHEST_MS = np.iinfo(np.int64).max // 1000 * 1000


def _scaled(ints: np.ndarray, factor: int, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """`ints` times `factor`; rows too far from 1970 for that (they would wrap) are not
    valid: they fail on their own, as a row without a time does."""
    if factor == 1 or not len(ints):
        return ints, valid
    bound = _FURTHEST_MS // factor
    near = (ints <= bound) & (ints >= -bound)
    if not near.all():
        valid = near if valid is None else valid & near
        ints = np.where(near, ints, 0)
    return ints * factor, valid


def column_millis(rows: pa.RecordBatch, column: str, unit: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(milliseconds per row, the rows that have a time, or None for all) of `column`:
    integers or floats in `unit`, or an Arrow timestamp in its own unit (UTC)."""
    if column not in rows.schema.names:
        raise ValueError(f"the batch has no event time column {column!r}")
    array = rows.column(column)
    kind = array.type
    valid = None if not array.null_count else array.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_timestamp(kind):
        ints = array.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        divisor = TIMESTAMP_DIVISORS[kind.unit]
        if divisor > 0:
            return ints // divisor, valid
        millis, near = _scaled(ints, -divisor, None)
        if near is not None:  # such a row has no Python value either: its batch fails, as other such values do
            raise ValueError(f"the event time column {column!r} holds a time about 292 million years or more from "
                             "1970, which has no Python datetime nor int64 milliseconds")
        return millis, valid
    if pa.types.is_integer(kind):
        ints = array.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        if unit in ("s", "ms"):
            return _scaled(ints, int(UNITS[unit]), valid)
        return ints // round(1 / UNITS[unit]), valid  # floor, as a datetime's microseconds are
    if pa.types.is_floating(kind):
        floats = array.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False) * UNITS[unit]
        near = np.abs(floats) <= _FURTHEST_MS  # False for NaN and infinities too; no int64 wrap
        if not near.all():
            valid = near if valid is None else valid & near
            floats = np.where(near, floats, 0.0)
        return np.rint(floats).astype(np.int64), valid  # half to even, as round()
    raise TypeError(f"the event time column {column!r} is {kind}; it takes integers or floats in {unit} since the "
                    "epoch, or an Arrow timestamp")


class AssignTimeOp(Operator):
    """Stamps records with their event time and feeds the generator. At a source it runs
    before the chain (with `partition` set per batch); as a step it is part of the chain.
    Its generator's newest times go into checkpoints with the source offsets; `carried`
    holds those of partitions that are gone now, kept for when they return."""

    def __init__(self, step: Step, event_time: EventTime, generator: WatermarkGenerator):
        super().__init__(step)
        self.column = event_time.time_column
        fn = event_time.timestamp_fn
        self.millis = self.column.of_record if self.column is not None else lambda record: to_millis(fn(record))
        self.generator = generator
        self.at_source = step.kind is StepKind.SOURCE
        self.partition = ""  # at a source: the partition of the batch being stamped
        self.carried: dict[str, int] = {}

    def event_times(self) -> dict[str, int]:
        return {**self.carried, **self.generator.snapshot()}

    def process(self, batch: Any) -> Any:
        batch, _ = untimed(batch)  # new times replace any the records had
        if isinstance(batch, (pa.RecordBatch, ArrowKeyed)):
            return self._stamp_columns(batch) if self.column is not None else self._stamp_rows(batch)
        records = as_records(batch)
        self.records_in += len(records)
        millis = self.millis
        try:
            times = [millis(r) for r in records]
        except Exception:
            records, times = self._stamp_one_by_one(records)
        self.generator.observe(self.partition, times)
        self.records_out += len(records)
        return Timed(records, times)

    def _stamp_columns(self, batch: pa.RecordBatch | ArrowKeyed) -> Any:
        """The batch as it is, with its times read from the column in one go."""
        rows = batch.batch if isinstance(batch, ArrowKeyed) else batch
        self.records_in += rows.num_rows
        column = self.column
        try:
            times, valid = column_millis(rows, column.column, column.unit)
        except Exception as exc:
            return self._batch_failed(batch, explained(exc, f"event time from column {column.column!r} failed on a "
                                                            f"batch with columns {', '.join(rows.schema.names)}"))
        if valid is not None:  # rows without a time fail one by one; the others go on
            self._fail_rows(batch, np.flatnonzero(~valid))
            mask = pa.array(valid)
            rows, times = rows.filter(mask), times[valid]
            batch = ArrowKeyed(rows, batch.key_columns) if isinstance(batch, ArrowKeyed) else rows
        self.generator.observe(self.partition, times)
        self.records_out += rows.num_rows
        return Timed(batch, times)

    def _stamp_rows(self, batch: pa.RecordBatch | ArrowKeyed) -> Any:
        """The batch as it is (its Arrow types untouched), with the times the function
        gives its rows; a row it fails on fails on its own and leaves the batch."""
        records = as_records(batch)
        self.records_in += len(records)
        try:
            times = np.fromiter(map(self.millis, records), dtype=np.int64, count=len(records))
        except Exception:  # OverflowError too: a time past int64 milliseconds
            kept, listed = self._times_one_by_one(records)
            times = np.asarray(listed, dtype=np.int64)
            if len(kept) < len(records):
                indices = pa.array(kept, type=pa.int64())
                batch = ArrowKeyed(batch.batch.take(indices), batch.key_columns) if isinstance(batch, ArrowKeyed) \
                    else batch.take(indices)
        self.generator.observe(self.partition, times)
        self.records_out += len(times)
        return Timed(batch, times)

    def _times_one_by_one(self, records: list[Any]) -> tuple[list[int], list[int]]:
        """(the indexes of the records that have a time, their times); the others fail."""
        kept, times = [], []
        for i, record in enumerate(records):
            try:
                t = self.millis(record)
                if not -2**63 <= t < 2**63:
                    raise OverflowError(f"the event time {t} ms is out of range")
            except Exception as exc:
                self.failed(record, exc)
                continue
            kept.append(i)
            times.append(t)
        return kept, times

    def _fail_rows(self, batch: pa.RecordBatch | ArrowKeyed, bad: np.ndarray) -> None:
        indices = pa.array(bad, type=pa.int64())
        taken: Any = ArrowKeyed(batch.batch.take(indices), batch.key_columns) if isinstance(batch, ArrowKeyed) \
            else batch.take(indices)
        name = self.column.column
        column = (taken.batch if isinstance(taken, ArrowKeyed) else taken).column(name)
        for record, value in zip(as_records(taken), column.to_pylist()):
            self.failed(record, TypeError(f"the event time column {name!r} holds {value!r}, not a time within about "
                                          "292 million years of 1970"))

    def _stamp_one_by_one(self, records: list[Any]) -> tuple[list[Any], list[int]]:
        kept, times = [], []
        for record in records:
            try:
                t = self.millis(record)
            except Exception as exc:
                self.failed(record, exc)
                continue
            kept.append(record)
            times.append(t)
        return kept, times
