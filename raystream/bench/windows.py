"""`python -m raystream.bench.windows`: the columnar window operators alone, without Ray,
against the per-record window operator on the same rows (docs/benchmarks.md).

Rows are Nexmark bids (`nexmark.batches`, flattened with `bids`) in event order, in
batches of `--rows`, keyed by auction; after each batch the watermark moves to the
batch's newest time, so windows fire as in a job, and each run starts from empty state.
The columnar operator counts bids per auction and window over Arrow (times as an array);
the per-record one counts with an Aggregator over (auction, 1) records with a list of
times, made before the clock starts (its best case: in a job the Arrow rows would first
become records).

`--invoice` measures instead the invoice step of jobs/billing_arrow.py (1-hour tumbling
windows, 10 minutes of allowed lateness, a sum and a count per customer) on its kind of
rows: 500 customers, batches spanning 18 hours of event time, one row in a thousand 6
hours late, the watermark a minute behind each batch's newest time, and the changed keys
snapshotted every 8 batches, as checkpoints would. Its state window-major against the
per-key layout of the same operator (what 0.6.1 and before ran for sums and lateness).
"""
from __future__ import annotations

import argparse
import datetime as dt
import time
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from raystream import aggregates
from raystream._runtime.operators.columnar_windows import ArrowWindowOp
from raystream._runtime.operators.windows import WindowOp
from raystream._runtime.time.watermarks import MAX_TIME
from raystream._runtime.transport.batch import ArrowKeyed, KeyedBatch, Timed
from raystream.connectors import nexmark
from raystream.graph import Step, StepKind, WindowSpec
from raystream.windows import Aggregator, Sliding, Tumbling

COUNT = Aggregator(create=lambda: 0, add=lambda n, _: n + 1, merge=lambda a, b: a + b)
ASSIGNERS = {"tumbling 10 s": Tumbling(10), "sliding 10 s / 2 s": Sliding(10, 2)}


def bid_batches(rows: int, batches: int) -> list[pa.RecordBatch]:
    """`batches` batches of `rows` bids (auction, price, date_time), in event order."""
    config = nexmark.NexmarkConfig(events=int(rows * batches / 0.92) + 50_000)
    bids = pa.Table.from_batches([nexmark.bids(b) for b in nexmark.batches(config)]).select(
        ["auction", "price", "date_time"]).combine_chunks()
    return [bids.slice(i * rows, rows).to_batches()[0] for i in range(batches)]


def run_columnar(assigner: Any, batches: list[pa.RecordBatch]) -> int:
    op = ArrowWindowOp(Step("w", StepKind.WINDOW, ("in",), key_columns=("auction",),
                            arrow=(("bids", aggregates.count()),), window=WindowSpec(assigner, 0, "columnar")))
    fired = 0
    for batch in batches:
        times = batch.column("date_time").to_numpy()
        op.process(Timed(ArrowKeyed(batch, ("auction",)), times))
        fired += len(op.on_watermark(int(times.max()) - 1))
    return fired + len(op.on_watermark(MAX_TIME))


def run_per_record(assigner: Any, batches: list[tuple[list[Any], list[Any], list[int]]]) -> int:
    op = WindowOp(Step("w", StepKind.WINDOW, ("in",), fn=COUNT, window=WindowSpec(assigner, 0, "aggregate")))
    fired = 0
    for keys, values, times in batches:
        op.process(Timed(KeyedBatch(keys, values), times))
        fired += len(op.on_watermark(max(times) - 1))
    return fired + len(op.on_watermark(MAX_TIME))


def rows_per_s(run: Callable[[], Any], rows: int, repeats: int) -> float:
    """The best of `repeats` runs over all the batches."""
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = max(best, rows / (time.perf_counter() - started))
    return best


def measure(rows: int, batches: int, repeats: int) -> list[dict[str, Any]]:
    arrow = bid_batches(rows, batches)
    records = [(b.column("auction").to_pylist(), [1] * b.num_rows, b.column("date_time").to_pylist()) for b in arrow]
    out = []
    for name, assigner in ASSIGNERS.items():
        assigner.check("w")
        assert run_columnar(assigner, arrow) == run_per_record(assigner, records)  # the same windows fire
        out.append({
            "windows": name, "rows": rows,
            "distinct_per_batch": int(np.mean([len(set(k)) for k, _, _ in records])),
            "columnar_rows_per_s": rows_per_s(lambda: run_columnar(assigner, arrow), rows * batches, repeats),
            "per_record_rows_per_s": rows_per_s(lambda: run_per_record(assigner, records), rows * batches, repeats),
        })
    return out


def invoice_batches(rows: int, batches: int) -> list[tuple[Timed, int]]:
    """Billing usage rows (customer, cents) with times, and the watermark after each batch."""
    rng = np.random.default_rng(1)
    span = 18 * 3_600_000
    out = []
    for i in range(batches):
        times = i * span + np.sort(rng.integers(0, span, rows))
        times = np.where(rng.random(rows) < 0.001, times - 6 * 3_600_000, times)  # late reports
        batch = pa.RecordBatch.from_arrays([pa.array(rng.integers(0, 500, rows)), pa.array(rng.integers(1, 1000, rows))],
                                           names=["customer", "cents"])
        out.append((Timed(ArrowKeyed(batch, ("customer",)), times), int(times.max()) - 60_000))
    return out


def run_invoice(batches: list[tuple[Timed, int]], window_major: bool) -> int:
    """The rows the invoice step emits over `batches`, in one layout."""
    assigner = Tumbling(dt.timedelta(hours=1))
    assigner.check("invoice")
    op = ArrowWindowOp(Step("invoice", StepKind.WINDOW, ("in",), key_columns=("customer",),
                            arrow=(("cents", aggregates.sum("cents")), ("events", aggregates.count())),
                            window=WindowSpec(assigner, 600_000, "columnar")))
    if not window_major:
        op._columnar, op.state = False, {}
    emitted = 0
    for i, (batch, watermark) in enumerate(batches):
        emitted += len(op.process(batch)) + len(op.on_watermark(watermark))
        if i % 8 == 7:
            op.changed_state()  # a checkpoint's changed keys
            op.changed.clear()
    return emitted + len(op.on_watermark(MAX_TIME))


def measure_invoice(rows: int, batches: int, repeats: int) -> dict[str, Any]:
    made = invoice_batches(rows, batches)
    assert run_invoice(made, True) == run_invoice(made, False)  # the same rows fire and update
    return {"rows": rows, "window_major_rows_per_s": rows_per_s(lambda: run_invoice(made, True), rows * batches, repeats),
            "per_key_rows_per_s": rows_per_s(lambda: run_invoice(made, False), rows * batches, repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=65_536, help="rows per batch")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--invoice", action="store_true", help="the billing invoice step, window-major and per key")
    args = parser.parse_args()
    if args.invoice:
        r = measure_invoice(args.rows // 2, args.batches * 8, args.repeats)
        print("| rows/batch | window-major rows/s | per-key rows/s | ratio |\n|---|---|---|---|")
        print(f"| {r['rows']:,} | {r['window_major_rows_per_s']:,.0f} | {r['per_key_rows_per_s']:,.0f} | "
              f"{r['window_major_rows_per_s'] / r['per_key_rows_per_s']:.1f} |")
        return
    print("| windows | rows/batch | auctions/batch | columnar rows/s | per-record rows/s | ratio |")
    print("|---|---|---|---|---|---|")
    for r in measure(args.rows, args.batches, args.repeats):
        print(f"| {r['windows']} | {r['rows']:,} | {r['distinct_per_batch']:,} | {r['columnar_rows_per_s']:,.0f} | "
              f"{r['per_record_rows_per_s']:,.0f} | {r['columnar_rows_per_s'] / r['per_record_rows_per_s']:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
