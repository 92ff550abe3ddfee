"""The turns of a source subtask: SubtaskActor's loop (actor.py) when its chain starts at
a source. It reads its partitions round-robin, a batch of each per round, and emits the
barriers the coordinator asks for after the batch going through the chain when they came
(C1), not after the round. When its partitions are exhausted it sends the end of time as
its watermark (not when the job is being stopped), tells the coordinator and waits for
the final barrier; once that is out it reads nothing more.
"""
from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

from raystream._runtime.plan.specs import SubtaskSpec
from raystream._runtime.state.store import CheckpointStore
from raystream._runtime.subtask.clock import ChainClock
from raystream._runtime.subtask.emitter import Emitter
from raystream._runtime.subtask.record_policies import RecordPolicies
from raystream._runtime.subtask.source_reader import SourceReader
from raystream._runtime.operators.event_time import AssignTimeOp
from raystream._runtime.transport.blocking import in_thread
from raystream.config import Guarantee
from raystream.testing.injector import Injector


class SourceTurns:
    """A part of SubtaskActor: the attributes below are the actor's (set in `configure`
    and `setup`), and so are `_raise_if_failed`, `_checkpoint` and `_emit`."""

    spec: SubtaskSpec
    store: CheckpointStore
    source: SourceReader
    out: Emitter
    clock: ChainClock
    policies: RecordPolicies
    assign_at_source: AssignTimeOp | None
    coordinator: Any
    faults: Injector
    _barrier_requests: collections.deque[tuple[int, bool]]
    _emitted_since_barrier: bool
    _told_finished: bool
    _final_out: bool
    _stopping: bool
    _wake: asyncio.Event

    async def _run_source(self) -> None:
        """Phases of each turn: emit the barriers asked for; when exhausted, wait for the
        final barrier; else read a round of batches, or idle until data may be there."""
        while True:
            self._raise_if_failed()
            if await self._emit_requested_barriers():
                return  # the final barrier is out
            if self._stopping:
                self.source.stop()
            if self.source.exhausted:
                if not self._stopping:  # a bounded input ended: the end of time (a stop is not one)
                    await self.out.deliver(self.clock.end_of_input())
                await self._await_final_barrier()
                continue
            progressed = await self.source.read_round(self._emit_source_batch, self._barriers_between_batches)
            if self._final_out:
                return
            if self.assign_at_source is not None:
                for key in self.source.ended:
                    self.assign_at_source.generator.end(key)
                self.assign_at_source.generator.polled_empty(self.source.empty)
            await self.out.flush_due()
            if progressed:
                await asyncio.sleep(0)  # let control calls (barriers, stop, metrics) in
            else:
                await self._idle()

    async def _emit_requested_barriers(self) -> bool:
        """C1: a barrier goes out between two batches. True once the final one is out."""
        while self._barrier_requests:
            if self.faults and self._emitted_since_barrier:
                self.faults.hit("batch_before_barrier", self._barrier_requests[0][0])
            self._emitted_since_barrier = False
            checkpoint_id, final = self._barrier_requests.popleft()
            await self._checkpoint(checkpoint_id, 0.0)
            if final:
                self._final_out = True
                return True
        return False

    async def _barriers_between_batches(self) -> bool:
        """C1 within a round: the barriers asked for while a batch went through the chain
        go out after it, not after a batch of every other partition too (with 4 partitions
        of 0.4 s batches, checkpoints took 12-19 s instead of 3). True ends the round: a
        stop takes effect after the current batch, as `stop_source` says (the final barrier
        comes after the partitions are exhausted, so not within a round)."""
        await asyncio.sleep(0)  # let the trigger and stop calls that came meanwhile in
        return await self._emit_requested_barriers() or self._stopping

    async def _await_final_barrier(self) -> None:
        if not self._told_finished:
            await self.coordinator.source_finished.remote(self.spec.attempt, self.spec.chain_name, self.spec.subtask)
            self._told_finished = True
        self._wake.clear()
        if not self._barrier_requests:
            await self._wake.wait()

    async def _emit_source_batch(self, partition: str, before: Any, after: Any, batch: Any) -> None:
        spec = self.spec
        if spec.guarantee == Guarantee.AT_MOST_ONCE:  # the offset is durable before the batch leaves
            await in_thread(self.store.progress.save, spec.run_id, self.source.step.step_id, spec.attempt,
                            partition, after)
        if spec.errors.mode == "dead_letter":
            self.policies.source_at = {"partition": partition, "offset": before}
        self.policies.count_source(batch)
        if self.assign_at_source is not None:
            self.assign_at_source.partition = partition
        await self._emit(batch)
        self._emitted_since_barrier = True

    async def _idle(self) -> None:
        """No partition had data: wait until one may, a linger deadline, or a control call."""
        delays = [self.source.idle_timeout()]
        if self.assign_at_source is not None:
            delays.append(self.spec.runtime.watermark_interval)  # idle partitions and held-back watermarks
        deadline = self.out.next_deadline()
        if deadline is not None:
            delays.append(deadline - time.monotonic())
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), max(0.0, min(delays)))
        except asyncio.TimeoutError:
            pass
