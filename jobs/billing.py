"""Billing: per-customer running totals and hourly invoices of usage events, exactly once.

The use case from the article behind raystream: usage events (customer, amount in
cents, event id, event time) from a deterministic generator, per-customer running
totals written by FileSink. Every output row carries the event id and the customer's
total after it. Hourly invoices per customer come from tumbling event-time windows
(`<out>_invoices`); a usage record reported more than 10 minutes after its hour closed
goes to `<out>_corrections` instead (one in 1,000 events is reported 6 hours late).

    raystream run jobs/billing.py --chaos 3

kills 3 random subtask processes while it runs; at the end `report` checks the
committed output against the generated events and prints the verdict. Sizes can be
changed with BILLING_EVENTS, BILLING_RATE (events/s), BILLING_OUT (output directory) and
BILLING_FILE_ROWS (rows per output file with BILLING_ROLL=checkpoint) and
BILLING_CUSTOMERS; BILLING_INVOICES=0 leaves the invoices out; BILLING_ROLL_SIZE (bytes)
and BILLING_ROLL_INTERVAL (seconds) change the totals' FileSink rolling policy from the
default (128 MiB or 60 s), and BILLING_ROLL=checkpoint makes it write one file per
subtask and checkpoint. BILLING_DEDUP (seconds of event time) puts a dedup step keyed by
event id before the stateful steps, dropping an id seen again within that long (the
at-least-once-plus-dedup pattern; the benchmark's billing_dedup workload compares it
with exactly-once).
"""
from __future__ import annotations

import collections
import datetime as dt
import os
import shutil
from dataclasses import dataclass

import raystream as rs
from raystream.windows import Aggregator, Tumbling

EVENTS = int(os.environ.get("BILLING_EVENTS", "200000"))
RATE = float(os.environ.get("BILLING_RATE", "25000"))
OUT = os.environ.get("BILLING_OUT", "out/billing")
FILE_ROWS = int(os.environ.get("BILLING_FILE_ROWS", "50000"))
CUSTOMERS = int(os.environ.get("BILLING_CUSTOMERS", "500"))
INVOICES = os.environ.get("BILLING_INVOICES", "1") != "0"
# The totals' files: FileSink's default rolling policy unless these say otherwise.
ROLL: dict = {}
if os.environ.get("BILLING_ROLL_SIZE"):
    ROLL["roll_size"] = int(os.environ["BILLING_ROLL_SIZE"])
if os.environ.get("BILLING_ROLL_INTERVAL"):
    ROLL["roll_interval"] = float(os.environ["BILLING_ROLL_INTERVAL"])
if os.environ.get("BILLING_ROLL"):
    ROLL["roll"] = os.environ["BILLING_ROLL"]
# Dedup by event id, within this many seconds of event time; unset: no dedup step.
DEDUP = float(os.environ["BILLING_DEDUP"]) if os.environ.get("BILLING_DEDUP") else None
START = 1_767_225_600  # 2026-01-01T00:00:00Z
SECONDS_PER_EVENT = 0.5  # of event time: 200,000 events span 28 hours
LATE_EVERY, LATE_BY = 1000, 6 * 3600  # one event in 1,000 is reported 6 hours late
LATENESS = dt.timedelta(minutes=10)


def usage_time(i: int) -> float:
    late = LATE_BY if i % LATE_EVERY == LATE_EVERY - 1 else 0
    return START + i * SECONDS_PER_EVENT - late


def usage_event(i: int) -> dict:
    """Event i of the generator: the same every time, so totals can be recomputed."""
    return {"event_id": i, "customer": f"c{(i * 7919) % CUSTOMERS:04d}", "cents": 1 + (i * 104729) % 5000,
            "time": usage_time(i)}


def add_to_total(total: int | None, event: dict) -> tuple[int, dict]:
    total = (total or 0) + event["cents"]
    return total, {**event, "total": total}


# an invoice: cents and events of one customer in one hour
INVOICE = Aggregator(create=lambda: (0, 0), add=lambda acc, e: (acc[0] + e["cents"], acc[1] + 1),
                     merge=lambda a, b: (a[0] + b[0], a[1] + b[1]))


def invoice_row(kv: tuple) -> dict:
    customer, result = kv
    cents, events = result.value
    return {"customer": customer, "hour": result.start.isoformat(), "cents": cents, "events": events,
            "update": result.update}


job = rs.Job(
    "billing", parallelism=2, checkpoint=rs.CheckpointConfig(interval=1.0),
    # every event becomes one row of totals: their committed ids must equal the sources' ids
    audit=rs.Audit(source_id=lambda i: i, sink_id=lambda row: row["event_id"], sinks=("totals",)),
)
usage = job.source("usage", rs.sources.SequenceSource(EVENTS, partitions=4, rate=RATE),
                   event_time=rs.EventTime(usage_time, max_delay=60) if INVOICES or DEDUP else None)
events = usage.map("event", usage_event)
if DEDUP:  # each event id once, before any state sees it
    events = events.key_by("by_id", lambda e: e["event_id"]).dedup("once", within=DEDUP).map(
        "first", lambda kv: kv[1])
by_customer = events.key_by("by_customer", lambda e: e["customer"])
(
    by_customer.stateful_map("running_total", add_to_total)
    .map("row", lambda kv: kv[1])
    .sink("totals", rs.sinks.FileSink(OUT, rows_per_file=FILE_ROWS, **ROLL))
)
if INVOICES:
    hourly = by_customer.window(Tumbling(dt.timedelta(hours=1)), allowed_lateness=LATENESS).aggregate(
        "invoice", INVOICE)
    hourly.map("invoice_row", invoice_row).sink("invoices", rs.sinks.FileSink(OUT + "_invoices"))
    hourly.late.map("correction", lambda kv: kv[1]).sink("corrections", rs.sinks.FileSink(OUT + "_corrections"))


def clear_outputs(out: str) -> None:
    """Remove the local output directories of a run writing to `out` (S3: left alone)."""
    if not out.startswith("s3://"):
        for directory in (out, out + "_invoices", out + "_corrections"):
            shutil.rmtree(directory, ignore_errors=True)


def setup(resume: bool) -> None:
    """A fresh run starts from empty output directories; a resumed one keeps them."""
    if not resume:
        clear_outputs(OUT)


@dataclass
class Verdict:
    events: int
    rows: int
    missing: int
    duplicated: int
    wrong_totals: int

    @property
    def ok(self) -> bool:
        return self.rows == self.events and not (self.missing or self.duplicated or self.wrong_totals)


def verify(directory: str = OUT, events: int = EVENTS) -> Verdict:
    """Check the committed output: every event exactly once; every customer's totals are
    the running sums of exactly its events (so no event was applied to state twice)."""
    rows = rs.sinks.read_files(directory)
    seen = collections.Counter(r["event_id"] for r in rows)
    expected: dict[str, int] = collections.Counter()
    for i in range(events):
        e = usage_event(i)
        expected[e["customer"]] += e["cents"]
    wrong = 0
    by_customer: dict[str, list[dict]] = collections.defaultdict(list)
    for r in rows:
        by_customer[r["customer"]].append(r)
    for customer, rs_ in by_customer.items():
        rs_.sort(key=lambda r: r["total"])
        previous = 0
        for r in rs_:
            if r["total"] - previous != r["cents"] or r != {**usage_event(r["event_id"]), "total": r["total"]}:
                wrong += 1
            previous = r["total"]
        if previous != expected[customer]:
            wrong += 1
    return Verdict(events, len(rows), missing=sum(1 for i in range(events) if i not in seen),
                   duplicated=sum(n - 1 for n in seen.values() if n > 1), wrong_totals=wrong)


@dataclass
class InvoiceVerdict:
    invoices: int
    corrections: int
    wrong: int  # invoices whose final amount is not the sum of their hour's on-time events
    duplicated: int  # an invoice or a correction committed twice
    misplaced: int  # a correction that was not a late report, or differs from its event

    @property
    def ok(self) -> bool:
        return not (self.wrong or self.duplicated or self.misplaced)


def _hour(t: float) -> str:
    return dt.datetime.fromtimestamp(t - t % 3600, tz=dt.timezone.utc).isoformat()


def verify_invoices(directory: str = OUT, events: int = EVENTS) -> InvoiceVerdict:
    """Check the committed invoices and corrections: each usage event is in exactly one of
    them. A late report goes to corrections when the watermark had passed its hour by more
    than the allowed lateness when it came (how far the watermark was depends on timing,
    so either place is right for it); an on-time event never does. Each invoice's final
    amount (its last update) is the sum of exactly the events of its hour not corrected."""
    corrections = rs.sinks.read_files(directory + "_corrections")
    late = collections.Counter(c["event_id"] for c in corrections)
    misplaced = sum(1 for c in corrections
                    if c["event_id"] % LATE_EVERY != LATE_EVERY - 1 or c != usage_event(c["event_id"]))
    expected: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0])
    for i in range(events):
        if i not in late:
            e = usage_event(i)
            amounts = expected[(e["customer"], _hour(e["time"]))]
            amounts[0] += e["cents"]
            amounts[1] += 1
    final: dict[tuple[str, str], dict] = {}
    fired = collections.Counter()
    for row in rs.sinks.read_files(directory + "_invoices"):
        key = (row["customer"], row["hour"])
        fired[key] += not row["update"]
        if key not in final or row["events"] > final[key]["events"]:
            final[key] = row  # amounts only grow: the last update has the most events
    wrong = sum(1 for key in expected.keys() | final.keys()
                if key not in final or key not in expected or [final[key]["cents"], final[key]["events"]]
                != expected[key])
    duplicated = sum(n - 1 for n in late.values()) + sum(n - 1 for n in fired.values() if n > 1)
    return InvoiceVerdict(len(final), len(corrections), wrong, duplicated, misplaced)


def report(result: rs.JobResult) -> bool:
    v = verify()
    print(f"billing: {v.rows:,} rows committed for {v.events:,} events; missing {v.missing}, "
          f"duplicated {v.duplicated}, wrong totals {v.wrong_totals}")
    invoices_ok = True
    if INVOICES:
        iv = verify_invoices()
        invoices_ok = iv.ok
        print(f"invoices: {iv.invoices:,} hourly invoices, {iv.corrections} late reports in corrections; "
              f"wrong {iv.wrong}, duplicated {iv.duplicated}, misplaced {iv.misplaced}")
    print(f"checkpoints: {result.checkpoints.completed} completed, {result.checkpoints.failed} failed; "
          f"restarts: {result.restarts}; records replayed: {result.records_replayed:,}")
    lines = rs.audit_checkpoints(result.checkpoint_root, result.run_id)
    bad = [line.checkpoint_id for line in lines if not line.matches]
    print(f"audit: {len(lines)} retained checkpoints, sources and sinks "
          + ("match in all" if not bad else f"DIFFER in {bad}"))
    ok = v.ok and not bad and invoices_ok
    print("VERDICT: exactly once" if ok else "VERDICT: FAILED")
    return ok


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
