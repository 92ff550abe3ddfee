"""What leaves one subtask: its output edges, the late records of its window steps, and
what its clock fires. `Emitter` is a part of SubtaskActor; it holds the receivers'
actor handles (in the channels) and nothing else of Ray.

- `send(batch)`: the chain's output to every output edge, and the records its window
  step found too late to its `late` edge (counted and logged when nobody takes them);
- `deliver(messages)`: what the clock fired, then the watermark, in that order;
- `next_deadline()` / `flush_due()`: the soonest of a partly filled buffer's linger and
  the clock's timers, and what is due then.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from raystream._runtime.transport.batch import batch_len, parts
from raystream._runtime.transport.channel import BATCH, WATERMARK, OutputChannel, OutputEdge
from raystream._runtime.subtask.clock import ChainClock, Message
from raystream._runtime.transport.keys import UnsupportedKeyError
from raystream._runtime.operators.base import Operator
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.operators.windows import TimedWindows
from raystream._runtime.plan.specs import OutputSpec
from raystream.config import RuntimeConfig

logger = logging.getLogger(__name__)


class Emitter:
    def __init__(self, name: str, edges: list[OutputEdge], ops: list[Operator], clock: ChainClock,
                 key_step: str):
        self.name = name
        self.edges = edges
        self.ops = ops
        self.clock = clock
        self.key_step = key_step  # the step a key that cannot be routed is blamed on
        self.window_ops = [op for op in ops if isinstance(op, TimedWindows)]
        self._has_late_edge = any(e.late for e in edges)
        self.late_dropped = 0

    @classmethod
    def connect(cls, name: str, outputs: list[OutputSpec], runtime: RuntimeConfig, ops: list[Operator],
                clock: ChainClock, key_step: str) -> "Emitter":
        """The emitter of a subtask whose output edges are `outputs` (from the coordinator)."""
        return cls(name, [OutputEdge(o.kind, [OutputChannel(h, c, runtime.max_in_flight) for h, c in o.targets],
                                     runtime.batch_size, runtime.linger, runtime.max_parallelism, late=o.late)
                          for o in outputs], ops, clock, key_step)

    @property
    def channels(self) -> list[OutputChannel]:
        return [ch for edge in self.edges for ch in edge.channels]

    async def send(self, out: Any) -> None:
        late = self._take_late()
        if not batch_len(out) and not late:
            return
        try:
            for edge in self.edges:
                for batch in late if edge.late else parts(out):
                    if batch_len(batch):
                        await edge.emit(batch)
        except UnsupportedKeyError as exc:  # the key function's fault: blame its step
            raise RecordFailure(self.key_step, exc.key, exc) from None

    def _take_late(self) -> list[Any]:
        """The late records for the late edge (a columnar join's come as a batch per side)."""
        late: list[Any] = []
        for op in self.window_ops:
            batches = op.take_late_batches()
            if not batches:
                continue
            if op is self.ops[-1] and self._has_late_edge:
                late = batches
                continue
            if self.late_dropped == 0:  # counted in the metrics; said once per subtask
                logger.warning("%s: records too late for their window in step %s are counted and dropped; "
                               "sink the step's .late stream to keep them", self.name, op.step_id)
            self.late_dropped += sum(map(batch_len, batches))
        return late

    async def deliver(self, messages: list[Message]) -> None:
        for kind, payload in messages:
            if kind == BATCH:
                await self.send(payload)
            else:
                await self.broadcast(WATERMARK, payload)

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (e.next_deadline() for e in self.edges) if d is not None]
        clock = self.clock.next_deadline()
        if clock is not None:
            deadlines.append(clock)
        return min(deadlines) if deadlines else None

    async def flush_due(self) -> None:
        """Fire what the clocks say is due; flush buffers whose linger is over."""
        await self.deliver(self.clock.on_time() + self.clock.tick())
        now = time.monotonic()
        for edge in self.edges:
            await edge.flush_due(now)

    async def broadcast(self, kind: int, payload: Any) -> None:
        for edge in self.edges:
            await edge.broadcast(kind, payload)

    async def flush_all(self) -> None:
        for edge in self.edges:
            await edge.flush_all()

    async def drain(self) -> None:
        for edge in self.edges:
            await edge.drain()

    def cancel_in_flight(self) -> None:
        """Nobody waits for the pushes in flight now (the subtask failed)."""
        for ch in self.channels:
            for fut in ch.in_flight:
                fut.cancel()
