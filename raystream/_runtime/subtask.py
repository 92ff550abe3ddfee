"""The subtask actor: one parallel instance of a chain of steps.

Run loop of a subtask with inputs:
  1. Take the next message from an unblocked input channel (round-robin), or wake up
     when the oldest partly filled output buffer is due (linger).
  2. A batch goes through the chain's operators; the output is partitioned into the
     output edges, which send full buffers downstream and wait when a channel has
     `max_in_flight` messages unacknowledged.
  3. The message is acknowledged (its push call returns) only after that, so a slow
     consumer stalls its producers.
  4. When every input channel has ended: operators close, buffers flush, end-of-stream
     goes out on every output channel, and the loop waits until it was processed.

A source subtask runs the same chain and outputs but reads its partitions round-robin
instead of an inbox.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import ray

from raystream._runtime.batch import batch_len
from raystream._runtime.keys import UnsupportedKeyError
from raystream._runtime.channel import BARRIER, BATCH, END, Inbox, OutputChannel, OutputEdge
from raystream._runtime.operators import Operator, RecordFailure, build_operator, run_chain, truncated_repr
from raystream.config import RuntimeConfig
from raystream.errors import SourceError
from raystream.job import Step
from raystream.result import Failure

logger = logging.getLogger(__name__)


@dataclass
class SubtaskSpec:
    """Everything one subtask actor needs to build itself (no actor handles)."""

    job_name: str
    chain_name: str
    steps: list[Step]
    subtask: int
    parallelism: int
    n_inputs: int
    runtime: RuntimeConfig
    source_partitions: list[str] = field(default_factory=list)  # for a source chain


@dataclass
class OutputSpec:
    """One output edge: its partitioning and the (actor, input channel) of each target."""

    kind: str
    targets: list[tuple[Any, int]]


@dataclass
class SubtaskReport:
    """What `run()` returns: counters per step, sink results, or the failure."""

    chain_name: str
    subtask: int
    steps: dict[str, tuple[int, int]]
    sink_results: dict[str, Any] = field(default_factory=dict)
    failure: Failure | None = None
    max_in_flight_seen: int = 0
    max_queued_seen: int = 0


@ray.remote
class SubtaskActor:
    def __init__(self, spec: SubtaskSpec):
        self.spec = spec
        self.ops: list[Operator] = [
            build_operator(s, spec.subtask, spec.parallelism) for s in spec.steps if s.kind != "source"
        ]
        self.source_step: Step | None = spec.steps[0] if spec.steps[0].kind == "source" else None
        self.source_out = 0
        self.inbox = Inbox(spec.n_inputs) if spec.n_inputs else None
        self.outputs: list[OutputEdge] = []
        self._stopping = False

    def pid(self) -> int:
        return os.getpid()

    def connect(self, outputs: list[OutputSpec]) -> None:
        rt = self.spec.runtime
        self.outputs = [
            OutputEdge(o.kind, [OutputChannel(h, c, rt.max_in_flight) for h, c in o.targets],
                       rt.batch_size, rt.linger, rt.max_parallelism)
            for o in outputs
        ]

    async def push(self, channel: int, seq: int, kind: int, payload: Any) -> None:
        await self.inbox.put(channel, seq, kind, payload)

    def stop_source(self) -> None:
        """Make a source subtask end its stream after the current batch."""
        self._stopping = True

    def metrics(self) -> SubtaskReport:
        return self._report()

    def _report(self, failure: Failure | None = None) -> SubtaskReport:
        steps = {op.step_id: (op.records_in, op.records_out) for op in self.ops}
        if self.source_step is not None:
            steps[self.source_step.step_id] = (0, self.source_out)
        chans = [ch for edge in self.outputs for ch in edge.channels]
        return SubtaskReport(
            self.spec.chain_name, self.spec.subtask, steps, failure=failure,
            max_in_flight_seen=max((ch.max_in_flight_seen for ch in chans), default=0),
            max_queued_seen=self.inbox.max_queued_seen if self.inbox else 0,
        )

    async def run(self) -> SubtaskReport:
        """Process until the end of every input; returns the report (with the failure, if any)."""
        try:
            if self.source_step is not None:
                await self._run_source()
            else:
                await self._run_inputs()
            sink_results = {op.step_id: op.close() for op in self.ops if op.step_id}
            for edge in self.outputs:
                await edge.broadcast(END, None)
            for edge in self.outputs:
                await edge.drain()
            report = self._report()
            report.sink_results = {k: v for k, v in sink_results.items() if v is not None}
            return report
        except RecordFailure as exc:
            return self._report(Failure("record", exc.step_id, exc.record_repr, exc.error, exc.traceback_text))
        except SourceError as exc:
            step = self.source_step.step_id if self.source_step else self.spec.chain_name
            return self._report(Failure("source", step, "", str(exc), traceback.format_exc()))
        except ray.exceptions.RayError as exc:  # a peer died; the coordinator knows why
            logger.info("subtask %s[%d] stopped: %s", self.spec.chain_name, self.spec.subtask, type(exc).__name__)
            return self._report(Failure("peer", self.spec.chain_name, "", f"{type(exc).__name__}: {exc}", ""))
        except Exception as exc:  # a bug or an infrastructure error: report it, never hang
            logger.exception("subtask %s[%d] failed", self.spec.chain_name, self.spec.subtask)
            return self._report(Failure("internal", self.spec.chain_name, "", f"{type(exc).__name__}: {exc}",
                                        traceback.format_exc()))

    async def _emit(self, batch: Any) -> None:
        out = run_chain(self.ops, batch) if self.ops else batch
        if batch_len(out):
            try:
                for edge in self.outputs:
                    await edge.emit(out)
            except UnsupportedKeyError as exc:  # the key function's fault: blame its step
                raise RecordFailure(self.spec.steps[-1].step_id, exc.key, exc) from None

    def _next_deadline(self) -> float | None:
        deadlines = [d for d in (e.next_deadline() for e in self.outputs) if d is not None]
        return min(deadlines) if deadlines else None

    async def _flush_due(self) -> None:
        now = time.monotonic()
        for edge in self.outputs:
            await edge.flush_due(now)

    async def _run_inputs(self) -> None:
        inbox = self.inbox
        ended = 0
        while ended < inbox.n:
            deadline = self._next_deadline()
            item = await inbox.get(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if item is None:
                await self._flush_due()
                continue
            channel, kind, payload, fut = item
            try:
                if kind == BATCH:
                    await self._emit(payload)
                elif kind == END:
                    ended += 1
                elif kind == BARRIER:
                    pass  # barriers are aligned and snapshotted by the checkpointing runtime
            finally:
                fut.set_result(None)
            if deadline is not None and deadline <= time.monotonic():
                await self._flush_due()
        for edge in self.outputs:
            await edge.flush_all()

    async def _run_source(self) -> None:
        step = self.source_step
        batch_size = self.spec.runtime.batch_size
        try:
            parts = [step.source.build_partition(key, None, batch_size) for key in self.spec.source_partitions]
        except Exception as exc:
            if isinstance(exc, SourceError):
                raise
            raise SourceError(f"source {step.step_id!r} could not open a partition: {exc}") from exc
        active = list(parts)
        while active and not self._stopping:
            progressed = False
            for part in list(active):
                batch = part.next_batch()
                if batch is None:
                    part.close()
                    active.remove(part)
                elif batch_len(batch):
                    progressed = True
                    self.source_out += batch_len(batch)
                    await self._emit(batch)
            await self._flush_due()
            if not progressed and active:
                wake = [w for w in (p.next_awake() for p in active) if w is not None]
                deadline = self._next_deadline()
                delays = [0.05] + [w - time.time() for w in wake]
                if deadline is not None:
                    delays.append(deadline - time.monotonic())
                await asyncio.sleep(max(0.0, min(delays)))
            else:
                await asyncio.sleep(0)  # let control calls (stop, metrics, barriers) in
        for part in active:
            part.close()
        for edge in self.outputs:
            await edge.flush_all()
