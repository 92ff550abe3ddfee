"""Benchmarks: `python -m raystream.bench wordcount [--parallelism 2] [--words N]`.

Prints throughput end to end (records/s of the whole job, from start to the last
record committed), with the machine it ran on. Numbers, not assertions: speed is
measured here, never in tests.
"""
from __future__ import annotations

import argparse
import operator
import os
import platform
import random
import tempfile
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

import raystream as rs

_VOCAB_SIZE = 20_000


def make_text(directory: str, words: int, files: int, seed: int = 7) -> int:
    """Write `files` text files of about `words` words in total (Zipf-like vocabulary)."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(_VOCAB_SIZE)]
    weights = [1.0 / (i + 1) for i in range(_VOCAB_SIZE)]
    total = 0
    per_file = words // files
    for f in range(files):
        sample = rng.choices(vocab, weights, k=per_file)
        lines = [" ".join(sample[i:i + 10]) for i in range(0, per_file, 10)]
        with open(os.path.join(directory, f"part{f}.txt"), "w") as out:
            out.write("\n".join(lines) + "\n")
        total += per_file
    return total


def _count_words(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Per-batch word counts with Arrow compute: the vectorized half of the pipeline."""
    words = pc.list_flatten(pc.utf8_split_whitespace(batch.column(0)))
    counts = pc.value_counts(words)
    return pa.RecordBatch.from_arrays([counts.field(0), counts.field(1)], names=["word", "n"])


def wordcount(directory: str, parallelism: int, *, vectorized: bool = False, **job_options: Any) -> rs.Job:
    """Plain Python flat_map/key_by/reduce, or map_batches with Arrow compute then key_by/reduce."""
    job = rs.Job("bench-wordcount", parallelism=parallelism, **job_options)
    lines = job.source("lines", rs.sources.FileSource(os.path.join(directory, "*.txt")))
    if vectorized:
        keyed = lines.map_batches("count_batch", _count_words).key_by(
            "by_word", lambda r: r["word"], value=lambda r: r["n"])
    else:
        keyed = lines.flat_map("split", str.split).key_by("by_word", lambda w: w, value=lambda w: 1)
    keyed.reduce("count", operator.add).sink("out", rs.sinks.CollectSink(keep="last"))
    return job


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def bench_wordcount(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as directory:
        total = make_text(directory, args.words, files=max(args.parallelism, 4))
        print(f"machine: {machine()}")
        print(f"input: {total:,} words in {max(args.parallelism, 4)} files, parallelism {args.parallelism}")
        for vectorized in (False, True):
            label = "map_batches + key_by/reduce" if vectorized else "flat_map/key_by/reduce"
            rates = []
            for _ in range(args.repeat):
                job = wordcount(directory, args.parallelism, vectorized=vectorized)
                t0 = time.perf_counter()
                result = job.run()
                elapsed = time.perf_counter() - t0
                counted = sum(n for _, n in result.outputs["out"])
                if counted != total:
                    raise SystemExit(f"wrong result: counted {counted} words of {total}")
                rates.append(total / elapsed)
            best = max(rates)
            print(f"{label:32s} {best:>12,.0f} words/s  (best of {args.repeat}: "
                  + ", ".join(f"{r:,.0f}" for r in rates) + ")")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m raystream.bench")
    sub = parser.add_subparsers(dest="bench", required=True)
    wc = sub.add_parser("wordcount", help="word count throughput, end to end")
    wc.add_argument("--parallelism", type=int, default=2)
    wc.add_argument("--words", type=int, default=10_000_000)
    wc.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    from raystream._runtime.driver import ensure_ray

    ensure_ray()
    if args.bench == "wordcount":
        bench_wordcount(args)


if __name__ == "__main__":
    main()
