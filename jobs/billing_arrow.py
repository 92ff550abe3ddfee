"""Billing over Arrow: jobs/billing.py with columnar steps, exactly once.

The same usage events (jobs/billing.py's generator, made a batch at a time in numpy), the
same per-customer totals and hourly invoices, with no Python per event:

- `usage`: `UsageSource`, a `SequenceSource(columnar=True)` whose batches of event
  numbers become Arrow columns (event_id, customer, cents, time) in numpy; the event
  time is the "time" column, each partition with its own watermark;
- `running_total`: `aggregate` keeps each customer's total and event count in numpy
  columns and emits, per batch, one row per customer the batch had: (customer, total,
  events) after the batch. The per-record job emits a row per event; this one is an
  upsert stream, as the per-record job's `reduce(..., emit="last")` would be;
- `invoice`: tumbling one-hour event-time windows with 10 minutes of allowed lateness,
  `sum` and `count` per customer and hour; a usage record too late for its hour goes to
  `<out>_corrections` as a row of its own. Which reports are too late depends on how
  much event time the source reads at once (BILLING_READ_SPAN, below): paced at
  BILLING_RATE, as `raystream run` runs it, reads are short and the late reports are
  corrections, as in jobs/billing.py; unpaced (the benchmark), a read spans 36 hours of
  event time and they go into their hours' invoices.

    raystream run jobs/billing_arrow.py --chaos 3

`report` checks the committed output against the generated events, either way.
BILLING_EVENTS, BILLING_RATE, BILLING_CUSTOMERS and BILLING_OUT (default
out/billing_arrow) mean what they mean for jobs/billing.py.
"""
from __future__ import annotations

import collections
import datetime as dt
import os
import runpy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import raystream as rs
from raystream import aggregates as agg
from raystream.windows import Tumbling

_PER_RECORD = runpy.run_path(str(Path(__file__).with_name("billing.py")), run_name="billing")
usage_event, usage_time = _PER_RECORD["usage_event"], _PER_RECORD["usage_time"]
EVENTS, RATE, CUSTOMERS = _PER_RECORD["EVENTS"], _PER_RECORD["RATE"], _PER_RECORD["CUSTOMERS"]
START, SECONDS_PER_EVENT = _PER_RECORD["START"], _PER_RECORD["SECONDS_PER_EVENT"]
LATE_EVERY, LATE_BY, LATENESS = _PER_RECORD["LATE_EVERY"], _PER_RECORD["LATE_BY"], _PER_RECORD["LATENESS"]
OUT = os.environ.get("BILLING_OUT", "out/billing_arrow")
HOUR_MS = 3_600_000
#: customer j's name, taken by index: one `take` per batch instead of a format per event
NAMES = pa.array([f"c{j:04d}" for j in range(CUSTOMERS)])


def usage_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Events `batch["value"]` of jobs/billing.py's generator as columns, in numpy: row k is
    `usage_event(value[k])`, time in seconds as a float."""
    i = batch.column("value").to_numpy().astype(np.int64)
    late = np.where(i % LATE_EVERY == LATE_EVERY - 1, LATE_BY, 0)
    return pa.RecordBatch.from_arrays(
        [pa.array(i), NAMES.take(pa.array((i * 7919) % CUSTOMERS)), pa.array(1 + (i * 104729) % 5000),
         pa.array(START + i * SECONDS_PER_EVENT - late)],
        names=["event_id", "customer", "cents", "time"])


#: Event time a partition reads at most at a time, in seconds (BILLING_READ_SPAN; unset:
#: `arrow_batch_size` rows, 36 hours of event time here when the source is not paced).
#: Rows read together are never late for each other: a report LATE_BY late goes to the
#: corrections only when reads span less than that, as jobs/billing.py's 4,096-record
#: reads (2.3 hours) do. The running totals are a row per customer and read, so shorter
#: reads also write more: 2 hours makes the job about 4 times slower.
READ_SPAN = float(os.environ["BILLING_READ_SPAN"]) if os.environ.get("BILLING_READ_SPAN") else None


class UsageSource(rs.sources.SequenceSource):
    """The generator's events as Arrow columns: the numbers of a columnar SequenceSource,
    each batch made into `usage_batch`'s columns where it is read (at most READ_SPAN of
    event time at a time, if set). The offsets are the SequenceSource's, so a run
    resumes where it stopped."""

    def __init__(self, events: int, *, partitions: int = 4, rate: float | None = None):
        super().__init__(events, partitions=partitions, rate=rate, columnar=True)

    def build_partition(self, key: str, resume_state, batch_size: int) -> rs.sources.SourcePartition:
        if READ_SPAN is not None:  # a partition's events are `partitions` events apart
            batch_size = min(batch_size, max(1, int(READ_SPAN / (SECONDS_PER_EVENT * self.partitions))))
        return _UsagePartition(super().build_partition(key, resume_state, batch_size))


class _UsagePartition(rs.sources.SourcePartition):
    def __init__(self, numbers: rs.sources.SourcePartition):
        self._numbers = numbers

    def next_batch(self):
        batch = self._numbers.next_batch()
        return usage_batch(batch) if isinstance(batch, pa.RecordBatch) else batch  # [] or None as they come

    def snapshot(self):
        return self._numbers.snapshot()

    def next_awake(self):
        return self._numbers.next_awake()


def build(out: str = OUT, events: int = EVENTS, rate: float | None = RATE) -> rs.Job:
    job = rs.Job("billing_arrow", parallelism=2, checkpoint=rs.CheckpointConfig(interval=1.0))
    # the time column holds seconds as floats; rounded to milliseconds as jobs/billing.py's are
    usage = job.source("usage", UsageSource(events, partitions=4, rate=rate),
                       event_time=rs.EventTime.column("time", unit="s", max_delay=60))
    by_customer = usage.key_by("by_customer", "customer")
    (by_customer.aggregate("running_total", total=agg.sum("cents"), events=agg.count())
     .sink("totals", rs.sinks.FileSink(out, format="parquet")))
    hourly = (by_customer.window(Tumbling(dt.timedelta(hours=1)), allowed_lateness=LATENESS)
              .aggregate("invoice", cents=agg.sum("cents"), events=agg.count()))
    (hourly.select("invoice_row", {"customer": "customer", "hour": pc.field("window_start").cast(pa.int64()),
                                   "cents": "cents", "events": "events", "update": "update"})
     .sink("invoices", rs.sinks.FileSink(out + "_invoices", format="parquet")))
    (hourly.late.select("correction", ["event_id", "customer", "cents", "time"])  # the rows, without the key
     .sink("corrections", rs.sinks.FileSink(out + "_corrections", format="parquet")))
    return job


job = build()


def setup(resume: bool) -> None:
    """A fresh run starts from empty output directories; a resumed one keeps them."""
    if not resume:
        _PER_RECORD["clear_outputs"](OUT)


@dataclass
class Verdict:
    customers: int
    updates: int  # (customer, total) rows committed
    wrong_totals: int  # customers whose last total or count is not that of exactly their events
    duplicated: int  # a customer's update committed twice (the same count of events)
    not_growing: int  # a customer's totals that do not grow with its count of events
    invoices: int
    wrong_invoices: int  # (customer, hour) whose last invoice is not the sum of its on-time events
    duplicated_invoices: int  # an invoice fired twice, or a correction committed twice
    misplaced: int  # a correction that was not a late report, or differs from its event

    @property
    def ok(self) -> bool:
        return not (self.wrong_totals or self.duplicated or self.not_growing or self.wrong_invoices
                    or self.duplicated_invoices or self.misplaced)


def verify(directory: str = OUT, events: int = EVENTS) -> Verdict:
    """Check the committed output against the generator. Totals: each customer's rows,
    ordered by count, have counts committed once and growing totals, and the last is the
    count and sum of exactly its events (an event applied twice or lost changes it).
    Invoices and corrections: as jobs/billing.py's `verify_invoices`; a late report is in
    corrections or in its hour's invoice, depending on how far the watermark was."""
    corrections = rs.sinks.read_files(directory + "_corrections", format="parquet")
    late = collections.Counter(c["event_id"] for c in corrections)
    misplaced = sum(1 for c in corrections
                    if c["event_id"] % LATE_EVERY != LATE_EVERY - 1 or c != usage_event(c["event_id"]))
    totals: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    hours: dict[tuple[str, int], list[int]] = collections.defaultdict(lambda: [0, 0])
    for i in range(events):
        e = usage_event(i)
        totals[e["customer"]][0] += e["cents"]
        totals[e["customer"]][1] += 1
        if i not in late:
            hour = hours[(e["customer"], int(e["time"] * 1000) // HOUR_MS * HOUR_MS)]
            hour[0] += e["cents"]
            hour[1] += 1
    updates: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    rows = rs.sinks.read_files(directory, format="parquet")
    for row in rows:
        updates[row["customer"]].append((row["events"], row["total"]))
    wrong = duplicated = not_growing = 0
    for customer in totals.keys() | updates.keys():
        seen = sorted(updates.get(customer, []))
        counts = [n for n, _ in seen]
        duplicated += len(counts) - len(set(counts))
        not_growing += any(a[1] >= b[1] for a, b in zip(seen, seen[1:]))
        wrong += not seen or list(seen[-1][::-1]) != totals.get(customer)
    final: dict[tuple[str, int], dict] = {}
    fired = collections.Counter()
    for row in rs.sinks.read_files(directory + "_invoices", format="parquet"):
        key = (row["customer"], row["hour"])
        fired[key] += not row["update"]
        if key not in final or row["events"] > final[key]["events"]:
            final[key] = row
    wrong_invoices = sum(1 for key in hours.keys() | final.keys()
                         if key not in final or [final[key]["cents"], final[key]["events"]] != hours.get(key))
    duplicated_invoices = sum(n - 1 for n in late.values()) + sum(n - 1 for n in fired.values())
    return Verdict(len(updates), len(rows), wrong, duplicated, not_growing, len(final), wrong_invoices,
                   duplicated_invoices, misplaced)


def report(result: rs.JobResult) -> bool:
    v = verify()
    print(f"billing over Arrow: {v.updates:,} total updates for {v.customers} customers; wrong totals "
          f"{v.wrong_totals}, duplicated {v.duplicated}, not growing {v.not_growing}")
    print(f"invoices: {v.invoices:,} hourly invoices; wrong {v.wrong_invoices}, duplicated "
          f"{v.duplicated_invoices}, misplaced corrections {v.misplaced}")
    print(f"checkpoints: {result.checkpoints.completed} completed, {result.checkpoints.failed} failed; "
          f"restarts: {result.restarts}; records replayed: {result.records_replayed:,}")
    print("VERDICT: exactly once" if v.ok else "VERDICT: FAILED")
    return v.ok


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
