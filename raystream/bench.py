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
import runpy
import signal
import statistics
import tempfile
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

import raystream as rs
from raystream._runtime.connect import ensure_ray
from raystream.sinks import committed_checkpoint

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


def _best_rate(make_job: Any, records: int, repeat: int, check: Any = None) -> list[float]:
    rates = []
    for _ in range(repeat):
        job = make_job()
        t0 = time.perf_counter()
        result = job.run()
        rates.append(records / (time.perf_counter() - t0))
        if check is not None:
            check(result)
    return rates


def bench_wordcount(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as directory:
        total = make_text(directory, args.words, files=max(args.parallelism, 4))
        print(f"machine: {machine()}")
        print(f"input: {total:,} words in {max(args.parallelism, 4)} files, parallelism {args.parallelism}")

        def check(result: rs.JobResult) -> None:
            counted = sum(n for _, n in result.outputs["out"])
            if counted != total:
                raise SystemExit(f"wrong result: counted {counted} words of {total}")

        for vectorized in (False, True):
            label = "map_batches + key_by/reduce" if vectorized else "flat_map/key_by/reduce"
            rates = _best_rate(lambda: wordcount(directory, args.parallelism, vectorized=vectorized,
                                                 checkpoint=rs.CheckpointConfig(storage=os.path.join(directory, "chk"))),
                               total, args.repeat, check)
            print(f"{label:32s} {max(rates):>12,.0f} words/s  (best of {args.repeat}: "
                  + ", ".join(f"{r:,.0f}" for r in rates) + ")")


_MODES = {  # label -> (guarantee, checkpoint interval)
    "no periodic checkpoints": ("exactly_once", 1e9),
    "at-least-once, 1 s checkpoints": ("at_least_once", 1.0),
    "exactly-once, 1 s checkpoints": ("exactly_once", 1.0),
}


def _load_billing(path: str, events: int, out: str, rate: float = 1e12) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise SystemExit(f"{path} not found: run from the repository root or pass --billing-job")
    os.environ.update(BILLING_EVENTS=str(events), BILLING_RATE=str(rate), BILLING_OUT=out)
    return runpy.run_path(path, run_name="__raystream_job__")


def bench_checkpoints(args: argparse.Namespace) -> None:
    """Throughput under each guarantee, against no periodic checkpoints."""
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as directory:
        total = make_text(directory, args.words, files=4)
        billing = _load_billing(args.billing_job, args.events, os.path.join(directory, "billing-out"))
        pipelines = {
            f"word count ({total:,} words)": (lambda cp, g: wordcount(
                directory, 2, checkpoint=cp, guarantee=g), total, "words/s"),
            f"billing ({args.events:,} events)": (lambda cp, g: billing["job"].with_options(
                checkpoint=cp, guarantee=g, audit=None), args.events, "events/s"),
        }
        for name, (build, records, unit) in pipelines.items():
            print(f"{name}, parallelism 2:")
            base = None
            for label, (guarantee, interval) in _MODES.items():
                cp = rs.CheckpointConfig(interval=interval, storage=os.path.join(directory, "chk"))
                rates = _best_rate(lambda: build(cp, guarantee), records, args.repeat)
                best = max(rates)
                base = base or best
                print(f"  {label:32s} {best:>12,.0f} {unit}  {100 * (best / base - 1):+6.1f}%  (runs: "
                      + ", ".join(f"{r:,.0f}" for r in rates) + ")")


def bench_recovery(args: argparse.Namespace) -> None:
    """Seconds from SIGKILL of a random subtask to the first output committed after recovery."""
    print(f"machine: {machine()}")
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "out")
        billing = _load_billing(args.billing_job, 10**9, out, rate=args.rate)
        job = billing["job"].with_options(checkpoint=rs.CheckpointConfig(
            interval=1.0, storage=os.path.join(directory, "chk")))
        handle = job.start()

        def newest_committed() -> int:
            """The newest checkpoint id among committed files (their names carry it)."""
            names = os.listdir(out) if os.path.isdir(out) else []
            return max((committed_checkpoint(n) or 0 for n in names), default=0)

        def wait_running(after_checkpoints: int) -> rs.JobStatus:
            while True:
                status = handle.status()
                if status.state == "running" and status.checkpoints.completed >= after_checkpoints and status.pids:
                    return status
                time.sleep(0.05)

        delays = []
        status = wait_running(2)
        for _ in range(args.kills):
            time.sleep(rng.uniform(0.0, 1.0))  # a random point between two checkpoints
            before = handle.status().checkpoints.last_id
            name = rng.choice(sorted(status.pids))
            t0 = time.monotonic()
            os.kill(status.pids[name], signal.SIGKILL)
            while newest_committed() <= before:  # output of a checkpoint taken after the kill
                time.sleep(0.01)
            delays.append(time.monotonic() - t0)
            print(f"  SIGKILL {name}: first committed output after {delays[-1]:.2f}s")
            status = wait_running(status.checkpoints.completed + 1)
        handle.stop()
        handle.wait()
        print(f"kill -> first committed output: median {statistics.median(delays):.2f}s, "
              f"max {max(delays):.2f}s over {len(delays)} kills (1 s checkpoints)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m raystream.bench")
    sub = parser.add_subparsers(dest="bench", required=True)
    wc = sub.add_parser("wordcount", help="word count throughput, end to end")
    wc.add_argument("--parallelism", type=int, default=2)
    wc.add_argument("--words", type=int, default=10_000_000)
    wc.add_argument("--repeat", type=int, default=3)
    cp = sub.add_parser("checkpoints", help="throughput per guarantee against no periodic checkpoints")
    cp.add_argument("--words", type=int, default=10_000_000)
    cp.add_argument("--events", type=int, default=1_000_000)
    cp.add_argument("--repeat", type=int, default=3)
    cp.add_argument("--billing-job", default="jobs/billing.py")
    rc = sub.add_parser("recovery", help="time from a SIGKILL to committed output again")
    rc.add_argument("--kills", type=int, default=7)
    rc.add_argument("--seed", type=int, default=1)
    rc.add_argument("--rate", type=float, default=50_000, help="events/s of the billing source")
    rc.add_argument("--billing-job", default="jobs/billing.py")
    args = parser.parse_args(argv)
    ensure_ray()
    {"wordcount": bench_wordcount, "checkpoints": bench_checkpoints, "recovery": bench_recovery}[args.bench](args)


if __name__ == "__main__":
    main()
