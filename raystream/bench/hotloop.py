"""`python -m raystream.bench.hotloop [--words N] [--emit every|last] [--repeat R]`

The per-record path of the `wordcount` workload in one process, without Ray: the source's
partitions, the steps chained before the keyed exchange (`run_chain`), the keyed edge
(routing, buffering, pickling), unpickling, and the steps after it into the sink, with the
CPU seconds of each stage. A profiler attached to this process (py-spy, cProfile) sees the
hot loop alone; the suite's figures (`python -m raystream.bench`) include Ray, several
processes and whatever else the machine runs.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from typing import Any

from raystream._runtime.operators.base import Operator, run_chain
from raystream._runtime.operators.plain import build_operator
from raystream._runtime.plan.physical import EdgeKind
from raystream._runtime.subtask.assembly import tune_gc
from raystream._runtime.transport.channel import OutputChannel, OutputEdge
from raystream._runtime.transport.packing import unpack
from raystream.bench.modes import MODES
from raystream.bench.synthetic import make_text, wordcount_job
from raystream.graph import Step, StepKind
from raystream.sink_api import SinkContext

PARALLELISM = 2  # the exchange's targets, as in the suite's jobs


class _Target:
    """Stands for a downstream actor handle: `push.remote` keeps the message and is done."""

    def __init__(self) -> None:
        self.inbox: list[Any] = []
        self.push = self

    def remote(self, channel: int, seq: int, kind: int, payload: Any) -> asyncio.Future:
        self.inbox.append(payload)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _operators(steps: list[Step], subtask: int) -> list[Operator]:
    return [build_operator(s, SinkContext(s.step_id, subtask, PARALLELISM, transactional=True)
                           if s.kind is StepKind.SINK else None) for s in steps]


async def _run(steps: list[Step], batch_size: int, cpu: dict[str, float]) -> list[list[Operator]]:
    source, rest = steps[0], steps[1:]
    cut = next(i for i, s in enumerate(rest) if s.kind.keyed)
    before, after = _operators(rest[:cut], 0), [_operators(rest[cut:], i) for i in range(PARALLELISM)]
    targets = [_Target() for _ in range(PARALLELISM)]
    edge = OutputEdge(EdgeKind.HASH, [OutputChannel(t, 0, 4) for t in targets], batch_size, 60.0, 128)

    def timed(stage: str, t0: float) -> float:
        t = time.process_time()
        cpu[stage] += t - t0
        return t

    for key in source.source.list_partitions():
        part = source.source.build_partition(key, None, batch_size)
        while True:
            t = time.process_time()
            batch = part.next_batch()
            t = timed("source", t)
            if batch is None:
                break
            out = run_chain(before, batch)
            t = timed("chain before the exchange", t)
            await edge.emit(out)
            t = timed("exchange (route, buffer, pickle)", t)
            for target, ops in zip(targets, after):
                messages, target.inbox = target.inbox, []
                for message in messages:
                    t = time.process_time()
                    received = unpack(message)
                    t = timed("unpickle", t)
                    run_chain(ops, received)
                    timed("chain after the exchange", t)
    await edge.flush_all()
    for target, ops in zip(targets, after):
        for message in target.inbox:
            run_chain(ops, unpack(message))
    return after


def hot_loop(words: int, emit: str = "every", batch_size: int = 4096) -> dict[str, Any]:
    """Runs the word count's per-record path once over `words` words; its figures."""
    with tempfile.TemporaryDirectory(prefix="raystream-hotloop-") as directory:
        text = os.path.join(directory, "text")
        os.makedirs(text)
        words = make_text(text, words)
        job = wordcount_job(text, MODES["exactly_once"], os.path.join(directory, "chk"), vectorized=False, emit=emit)
        cpu = dict.fromkeys(("source", "chain before the exchange", "exchange (route, buffer, pickle)", "unpickle",
                             "chain after the exchange"), 0.0)
        t0 = time.process_time()
        after = asyncio.run(_run(list(job.steps.values()), batch_size, cpu))
        total = time.process_time() - t0
    sink_records = sum(op.records_in for ops in after for op in ops if op.step_id == "out")
    return {"words": words, "cpu_s": total, "words_per_cpu_s": words / total, "stages_cpu_s": cpu,
            "sink_records": sink_records}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m raystream.bench.hotloop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--words", type=int, default=4_000_000)
    parser.add_argument("--emit", choices=("every", "last"), default="every", help="the reduce's emit mode")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--python-gc", action="store_true",
                        help="keep CPython's collector thresholds (a subtask's process raises the young one)")
    args = parser.parse_args(argv)
    if not args.python_gc:
        tune_gc()  # as in a subtask's process
    for _ in range(args.repeat):
        r = hot_loop(args.words, args.emit, args.batch_size)
        stages = ", ".join(f"{k} {v:.3f}s ({v / r['cpu_s']:.0%})" for k, v in r["stages_cpu_s"].items())
        print(f"{r['words']:,} words in {r['cpu_s']:.3f} CPU s: {r['words_per_cpu_s']:,.0f} words per CPU second; "
              f"{r['sink_records']:,} records into the sink; {stages}", flush=True)


if __name__ == "__main__":
    main()
