"""`python -m raystream.bench.aggregate`: the columnar `aggregate` operator alone, without
Ray, against the per-record `reduce` operator on the same rows (docs/benchmarks.md).

Rows are (key, price) with uniform int keys. `aggregate` computes count, sum and max
of price per key; `reduce` computes the same triple per record, from values made
before the clock starts (its best case: in a job a key_by's value function makes them).
Both keep their state across batches, as in a job. Also measured: splitting a keyed
batch by target subtask, Arrow per distinct key against the per-record router.
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from raystream import aggregates
from raystream._runtime.operators.plain import build_operator
from raystream._runtime.transport.arrow_keys import arrow_targets, split_rows, take_rows
from raystream._runtime.transport.batch import ArrowKeyed, KeyedBatch
from raystream._runtime.transport.keys import KeyRouter
from raystream.graph import Step

CASES = ((4096, 100), (4096, 10_000), (65536, 100), (65536, 10_000))


def rows_per_s(run: Callable[[], Any], rows: int, seconds: float, repeats: int) -> float:
    """The best of `repeats` rates, each over at least `seconds` of runs."""
    run()  # warm: the state holds the keys, as in steady state
    best = 0.0
    for _ in range(repeats):
        n, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            run()
            n += 1
        best = max(best, n * rows / elapsed)
    return best


def add(acc: tuple[int, int, int], value: tuple[int, int, int]) -> tuple[int, int, int]:
    return acc[0] + value[0], acc[1] + value[1], max(acc[2], value[2])


def measure(rows: int, keys: int, seconds: float, repeats: int, parallelism: int = 2) -> dict[str, Any]:
    rng = np.random.default_rng(rows + keys)
    key, price = rng.integers(0, keys, rows), rng.integers(1, 1000, rows)
    batch = pa.RecordBatch.from_pydict({"key": key, "price": price})
    agg = build_operator(Step("stats", "aggregate", ("by_key",), key_columns=("key",), arrow=(
        ("n", aggregates.count()), ("total", aggregates.sum("price")), ("top", aggregates.max("price")))))
    reduce = build_operator(Step("stats", "reduce", ("by_key",), fn=add))
    key_list, values = key.tolist(), [(1, p, p) for p in price.tolist()]
    router = KeyRouter(parallelism, 128)

    def split_arrow() -> None:
        targets = arrow_targets(batch, ("key",), router)
        for part in split_rows(targets, parallelism):
            take_rows(batch, part)

    def split_records() -> None:  # OutputEdge._emit_keyed's loop
        out: list[list[Any]] = [[] for _ in range(parallelism)]
        for (target, k), v in zip(router.route_all(key_list), values):
            out[target].append(k)
            out[target].append(v)

    return {
        "rows": rows, "keys": keys,
        "distinct_per_batch": len(set(key_list)),
        "aggregate_rows_per_s": rows_per_s(lambda: agg.process(ArrowKeyed(batch, ("key",))), rows, seconds, repeats),
        "reduce_rows_per_s": rows_per_s(lambda: reduce.process(KeyedBatch(key_list, values)), rows, seconds, repeats),
        "split_arrow_rows_per_s": rows_per_s(split_arrow, rows, seconds, repeats),
        "split_records_rows_per_s": rows_per_s(split_records, rows, seconds, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.3, help="per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| rows/batch | keys | distinct/batch | aggregate rows/s | reduce rows/s | ratio | "
          "split Arrow rows/s | split records rows/s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rows, keys in CASES:
        r = measure(rows, keys, args.seconds, args.repeats)
        print(f"| {rows:,} | {keys:,} | {r['distinct_per_batch']:,} | {r['aggregate_rows_per_s']:,.0f} | "
              f"{r['reduce_rows_per_s']:,.0f} | {r['aggregate_rows_per_s'] / r['reduce_rows_per_s']:.1f} | "
              f"{r['split_arrow_rows_per_s']:,.0f} | {r['split_records_rows_per_s']:,.0f} | "
              f"{r['split_arrow_rows_per_s'] / r['split_records_rows_per_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
