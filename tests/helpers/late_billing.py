"""A billing job over Arrow whose late usage reports land within the allowed lateness, so
that the invoice windows take rows after they fired and emit updates (`update=True`).

jobs/billing_arrow.py's reports are 6 hours late: past its 10 minutes of lateness, they
always go to the corrections and never update an invoice. Here one report in LATE_EVERY
is 5, 12, 19, 26 or 33 minutes late: the first two update their hour's invoice, the rest
are corrections. `per_key=True` adds a `mean`, which window-major tables do not hold, so
the step keeps its windows per key: the reference layout.
"""
from __future__ import annotations

import collections
import datetime as dt
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import raystream as rs
from raystream import aggregates as agg
from raystream.windows import Tumbling

START = 1_767_225_600
SECONDS_PER_EVENT = 0.5
CUSTOMERS = 40
LATE_EVERY = 37
LATENESS = dt.timedelta(minutes=10)
HOUR_MS = 3_600_000
NAMES = pa.array([f"c{j:04d}" for j in range(CUSTOMERS)])


def late_by(i: Any) -> Any:
    """Seconds event i (an int or an array) is reported late."""
    return np.where(i % LATE_EVERY == LATE_EVERY - 1, 60 * (5 + 7 * ((i // LATE_EVERY) % 5)), 0)


def event(i: int) -> dict[str, Any]:
    return {"event_id": i, "customer": f"c{(i * 7919) % CUSTOMERS:04d}", "cents": 1 + (i * 104729) % 5000,
            "time": START + i * SECONDS_PER_EVENT - int(late_by(np.int64(i)))}


def usage_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    i = batch.column("value").to_numpy().astype(np.int64)
    return pa.RecordBatch.from_arrays(
        [pa.array(i), NAMES.take(pa.array((i * 7919) % CUSTOMERS)), pa.array(1 + (i * 104729) % 5000),
         pa.array(START + i * SECONDS_PER_EVENT - late_by(i))],
        names=["event_id", "customer", "cents", "time"])


class UsageSource(rs.sources.SequenceSource):
    """Usage columns made from a columnar SequenceSource where it is read."""

    def __init__(self, events: int, *, rate: float | None = None):
        super().__init__(events, partitions=4, rate=rate, columnar=True)

    def build_partition(self, key: Any, resume_state: Any, batch_size: int) -> rs.sources.SourcePartition:
        return _UsagePartition(super().build_partition(key, resume_state, batch_size))


class _UsagePartition(rs.sources.SourcePartition):
    def __init__(self, numbers: rs.sources.SourcePartition):
        self._numbers = numbers

    def next_batch(self) -> Any:
        batch = self._numbers.next_batch()
        return usage_batch(batch) if isinstance(batch, pa.RecordBatch) else batch

    def snapshot(self) -> Any:
        return self._numbers.snapshot()

    def next_awake(self) -> Any:
        return self._numbers.next_awake()


def build(out: str, events: int, rate: float | None, *, per_key: bool = False) -> rs.Job:
    job = rs.Job("late_billing", parallelism=2, checkpoint=rs.CheckpointConfig(interval=0.3),
                 runtime=rs.RuntimeConfig(batch_size=1000, arrow_batch_size=1000))
    usage = job.source("usage", UsageSource(events, rate=rate),
                       event_time=rs.EventTime.column("time", unit="s", max_delay=60))
    aggregates = dict(cents=agg.sum("cents"), events=agg.count())
    if per_key:
        aggregates["mean"] = agg.mean("cents")
    hourly = (usage.key_by("by_customer", "customer")
              .window(Tumbling(dt.timedelta(hours=1)), allowed_lateness=LATENESS)
              .aggregate("invoice", **aggregates))
    (hourly.select("invoice_row", {"customer": "customer", "hour": pc.field("window_start").cast(pa.int64()),
                                   "cents": "cents", "events": "events", "update": "update"})
     .sink("invoices", rs.sinks.FileSink(out + "_invoices", format="parquet")))
    (hourly.late.select("correction", ["event_id", "customer", "cents", "time"])
     .sink("corrections", rs.sinks.FileSink(out + "_corrections", format="parquet")))
    return job


def verify(out: str, events: int) -> dict[str, Any]:
    """What is wrong with the committed output (`problems` empty: exactly once). Per
    (customer, hour), the invoice rows in the order of their counts are one first result
    then updates, each with more events and cents than the one before (a row committed
    twice repeats a count); the last is the sum and count of the hour's events that are
    not corrections. Each correction is a late report, once."""
    corrections = rs.sinks.read_files(out + "_corrections", format="parquet")
    late = collections.Counter(c["event_id"] for c in corrections)
    problems: dict[str, list[Any]] = collections.defaultdict(list)
    problems["misplaced correction"] = [c for c in corrections if c != event(c["event_id"])
                                        or c["event_id"] % LATE_EVERY != LATE_EVERY - 1]
    problems["correction twice"] = [e for e, n in late.items() if n > 1]
    hours: dict[tuple[str, int], list[int]] = collections.defaultdict(lambda: [0, 0])
    for i in range(events):
        if i not in late:
            e = event(i)
            h = hours[(e["customer"], int(e["time"] * 1000) // HOUR_MS * HOUR_MS)]
            h[0] += e["cents"]
            h[1] += 1
    rows: dict[tuple[str, int], list[dict[str, Any]]] = collections.defaultdict(list)
    invoices = rs.sinks.read_files(out + "_invoices", format="parquet")
    for r in invoices:
        rows[(r["customer"], r["hour"])].append(r)
    for key in hours.keys() | rows.keys():
        got = sorted(rows.get(key, []), key=lambda r: (r["events"], r["update"]))
        shape = [(r["events"], r["cents"], r["update"]) for r in got]
        if not got or [r["update"] for r in got] != [False] + [True] * (len(got) - 1):
            problems["not one first result, then updates"].append((key, shape))
        elif any(a["events"] >= b["events"] or a["cents"] >= b["cents"] for a, b in zip(got, got[1:])):
            problems["a row twice, or not growing"].append((key, shape))
        elif [got[-1]["cents"], got[-1]["events"]] != hours.get(key):
            problems["wrong last invoice"].append((key, shape, hours.get(key)))
    return {"problems": {k: v for k, v in problems.items() if v}, "updates": sum(r["update"] for r in invoices),
            "corrections": len(corrections), "hours": len(hours)}
