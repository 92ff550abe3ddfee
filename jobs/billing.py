"""Billing: per-customer running totals of usage events, exactly once.

The use case from the article behind raystream: usage events (customer, amount in
cents, event id) from a deterministic generator, per-customer running totals written
by FileSink. Every output row carries the event id and the customer's total after it.

    raystream run jobs/billing.py --chaos 3

kills 3 random subtask processes while it runs; at the end `report` checks the
committed output against the generated events and prints the verdict. Sizes can be
changed with BILLING_EVENTS, BILLING_RATE (events/s), BILLING_OUT (output directory) and
BILLING_FILE_ROWS (rows per output file) and BILLING_CUSTOMERS.
"""
from __future__ import annotations

import collections
import os
import shutil
from dataclasses import dataclass

import raystream as rs

EVENTS = int(os.environ.get("BILLING_EVENTS", "200000"))
RATE = float(os.environ.get("BILLING_RATE", "25000"))
OUT = os.environ.get("BILLING_OUT", "out/billing")
FILE_ROWS = int(os.environ.get("BILLING_FILE_ROWS", "50000"))
CUSTOMERS = int(os.environ.get("BILLING_CUSTOMERS", "500"))


def usage_event(i: int) -> dict:
    """Event i of the generator: the same every time, so totals can be recomputed."""
    return {"event_id": i, "customer": f"c{(i * 7919) % CUSTOMERS:04d}", "cents": 1 + (i * 104729) % 5000}


def add_to_total(total: int | None, event: dict) -> tuple[int, dict]:
    total = (total or 0) + event["cents"]
    return total, {**event, "total": total}


job = rs.Job(
    "billing", parallelism=2, checkpoint=rs.CheckpointConfig(interval=1.0),
    # every event becomes one row: the sinks' committed ids must equal the sources' ids
    audit=rs.Audit(source_id=lambda i: i, sink_id=lambda row: row["event_id"]),
)
(
    job.source("usage", rs.sources.SequenceSource(EVENTS, partitions=4, rate=RATE))
    .map("event", usage_event)
    .key_by("by_customer", lambda e: e["customer"])
    .stateful_map("running_total", add_to_total)
    .map("row", lambda kv: kv[1])
    .sink("totals", rs.sinks.FileSink(OUT, rows_per_file=FILE_ROWS))
)


def setup(resume: bool) -> None:
    """A fresh run starts from an empty output directory; a resumed one keeps it."""
    if not resume and not OUT.startswith("s3://"):
        shutil.rmtree(OUT, ignore_errors=True)


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


def report(result: rs.JobResult) -> bool:
    v = verify()
    print(f"billing: {v.rows:,} rows committed for {v.events:,} events; missing {v.missing}, "
          f"duplicated {v.duplicated}, wrong totals {v.wrong_totals}")
    print(f"checkpoints: {result.checkpoints.completed} completed, {result.checkpoints.failed} failed; "
          f"restarts: {result.restarts}; records replayed: {result.records_replayed:,}")
    lines = rs.audit_checkpoints(result.checkpoint_root, result.run_id)
    bad = [line.checkpoint_id for line in lines if not line.matches]
    print(f"audit: {len(lines)} retained checkpoints, sources and sinks "
          + ("match in all" if not bad else f"DIFFER in {bad}"))
    ok = v.ok and not bad
    print("VERDICT: exactly once" if ok else "VERDICT: FAILED")
    return ok
