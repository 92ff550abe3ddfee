"""The subtask actor: one parallel instance of a chain of steps.

Run loop of a subtask with inputs:
  1. Take the next message from an unblocked input channel (round-robin), or wake up
     when the oldest partly filled output buffer is due (linger).
  2. A batch goes through the chain's operators; the output is partitioned into the
     output edges, which send full buffers downstream and wait when a channel has
     `max_in_flight` messages unacknowledged.
  3. A barrier goes to the alignment (alignment.py, protocol step C2); when it
     completes, the subtask checkpoints (`Snapshotting._checkpoint`, C3-C4).
  4. The message is acknowledged (its push call returns) only after that, so a slow
     consumer stalls its producers.
  5. When every input has ended: end-of-stream goes out on every output; the subtask
     then waits until the last checkpoint it took part in is committed, so its sinks
     have made everything visible; then operators close.

A source subtask runs the same chain and outputs but reads its partitions round-robin,
and emits a barrier between two batches when the coordinator asks for one. When its
partitions are exhausted it tells the coordinator and waits for the final barrier.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
import traceback
from typing import Any

import pyarrow as pa
import ray

from raystream._runtime.alignment import Aligned, Alignment
from raystream._runtime.batch import batch_len
from raystream._runtime.channel import BARRIER, BATCH, END, Inbox, OutputChannel, OutputEdge
from raystream._runtime.checkpoint import CheckpointStore
from raystream._runtime.keys import UnsupportedKeyError
from raystream._runtime.operators import (
    KeyedOp, Operator, RecordFailure, SinkOp, build_operator, run_chain,
)
from raystream._runtime.record_policies import RecordPolicies
from raystream._runtime.recovery import load_state
from raystream._runtime.snapshotting import Snapshotting
from raystream._runtime.spec import OutputSpec, RestoreSpec, SubtaskReport, SubtaskSpec
from raystream.audit import Tally
from raystream.config import Guarantee
from raystream.errors import SourceError
from raystream.faults import Injector, install_s3_faults
from raystream.result import Failure
from raystream.sinks import SinkContext
from raystream.sources import SourcePartition

logger = logging.getLogger(__name__)


@ray.remote
class SubtaskActor(Snapshotting, RecordPolicies):
    def __init__(self, spec: SubtaskSpec):
        if spec.runtime.faults:
            install_s3_faults(spec.runtime.faults)
        self.spec = spec
        self.name = f"{spec.chain_name}[{spec.subtask}]"
        self.store = CheckpointStore(spec.checkpoint_root)
        self.source_step = spec.steps[0] if spec.steps[0].kind == "source" else None
        self.ops: list[Operator] = []
        self.parts: dict[str, SourcePartition] = {}
        self.source_out = 0
        self.inbox = Inbox(spec.n_inputs) if spec.n_inputs else None
        self.alignment = Alignment(spec.n_inputs, aligned=spec.guarantee == Guarantee.EXACTLY_ONCE)
        self.outputs: list[OutputEdge] = []
        self.coordinator: Any = None
        self._stopping = False
        self._barrier_requests: collections.deque[tuple[int, bool]] = collections.deque()
        self._wake = asyncio.Event()
        self._snapshots: asyncio.Queue[bytes] = asyncio.Queue()
        self._upload_tail: asyncio.Task | None = None
        self._last_barrier = 0
        self._committed = 0
        self._committed_event = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._fatal: BaseException | None = None
        self.faults = Injector(spec.runtime.faults, attempt=spec.attempt, subtask=spec.subtask,
                               steps=tuple(s.step_id for s in spec.steps))
        self.dead_letters: SinkOp | None = None  # this chain's writer of the dead-letter sink
        self.source_tally: Tally | None = None  # audit of what this source emitted
        self._dead: list[dict[str, Any]] = []
        self._source_at: dict[str, Any] | None = None  # partition and offset of the batch in flight

    # --- control calls from the coordinator ---------------------------------------------

    def pid(self) -> int:
        return os.getpid()

    async def until_killed(self) -> None:
        """Never returns: the coordinator awaits this call after killing the actor, and its
        ActorDiedError says that the process is gone (R1)."""
        await asyncio.Event().wait()

    async def setup(self, restore: RestoreSpec | None, outputs: list[OutputSpec], coordinator: Any,
                    progress: dict[str, Any] | None = None) -> dict[str, int]:
        """Build the operators (from restored state, if any) and connect the outputs.
        `progress`: at-most-once, the offsets sources saved before their last batches,
        which win over the checkpoint's. Returns how many snapshots were read per tier."""
        spec, rt = self.spec, self.spec.runtime
        self.coordinator = coordinator
        state = None
        if restore is not None:
            state = await load_state(restore, self.store, spec.subtask, spec.parallelism, rt.max_parallelism)
            if self.faults:
                self.faults.hit("restore", state.checkpoint_id)
        self._build_operators(state)
        self._setup_error_policy(state)
        self._setup_audit(state)
        if state is not None or spec.attempt > 1:
            loop = asyncio.get_running_loop()
            for op in self._sinks():  # R4: commit what the restored checkpoint pre-committed; abort the rest
                if op.transactional:
                    txns = state.sink_txns.get(op.step_id, []) if state else []
                    restored = state.checkpoint_id if state else 0
                    await loop.run_in_executor(None, op.writer.recover, txns, restored)
        if self.source_step is not None:
            offsets = dict(state.source_offsets) if state else {}
            offsets.update(progress or {})
            self._open_partitions(offsets, state)
        self.outputs = [
            OutputEdge(o.kind, [OutputChannel(h, c, rt.max_in_flight) for h, c in o.targets],
                       rt.batch_size, rt.linger, rt.max_parallelism)
            for o in outputs
        ]
        return state.tiers if state is not None else {}

    def _build_operators(self, state: Any) -> None:
        spec = self.spec
        for step in spec.steps:
            if step.kind == "source":
                continue
            ctx = None
            if step.kind == "sink":
                ctx = SinkContext(step.step_id, spec.subtask, spec.parallelism,
                                  transactional=spec.guarantee == Guarantee.EXACTLY_ONCE,
                                  resume_state=state.sink_states.get(step.step_id) if state else None,
                                  run_id=spec.run_id, attempt=spec.attempt)
            op = build_operator(step, ctx)
            if state is not None:
                if isinstance(op, KeyedOp):
                    op.state = state.keyed.get(step.step_id, {})
                op.records_in, op.records_out = state.counters.get(step.step_id, (0, 0))
                op.errors = state.errors.get(step.step_id, 0)
            self.ops.append(op)

    def _open_partitions(self, offsets: dict[str, Any], state: Any) -> None:
        """Each partition assigned to this subtask continues from its offset, wherever it
        was read before; a partition no checkpoint knows starts at its beginning."""
        spec, step = self.spec, self.source_step
        if state is not None:
            self.source_out = state.counters.get(step.step_id, (0, 0))[1]
        if spec.subtask == 0 and offsets:
            new = [p for p in spec.all_partitions if p not in offsets]
            gone = sorted(set(offsets) - set(spec.all_partitions))
            if new:
                logger.info("source %s: %d new partitions start at their beginning: %s", step.step_id, len(new),
                            ", ".join(new[:5]) + (" ..." if len(new) > 5 else ""))
            if gone:
                logger.warning("source %s: %d partitions of the checkpoint are gone and are not read: %s",
                               step.step_id, len(gone), ", ".join(gone[:5]) + (" ..." if len(gone) > 5 else ""))
        try:
            for key in spec.source_partitions:
                self.parts[key] = step.source.build_partition(key, offsets.get(key), spec.runtime.batch_size)
        except SourceError as exc:
            self._fatal = exc
        except Exception as exc:
            self._fatal = SourceError(f"source {step.step_id!r} could not open a partition: {exc}")

    def _sinks(self) -> list[SinkOp]:
        sinks = [op for op in self.ops if isinstance(op, SinkOp)]
        return sinks + [self.dead_letters] if self.dead_letters is not None else sinks

    async def push(self, channel: int, seq: int, kind: int, payload: Any) -> None:
        await self.inbox.put(channel, seq, kind, payload)

    def trigger_checkpoint(self, checkpoint_id: int, final: bool = False) -> None:
        """Source subtasks: emit barrier `checkpoint_id` after the current batch."""
        self._barrier_requests.append((checkpoint_id, final))
        self._wake.set()

    def stop_source(self) -> None:
        """End this source's stream after the current batch."""
        self._stopping = True
        self._wake.set()

    def _fail(self, exc: BaseException) -> None:
        """Stop this subtask: the run loop, or the wait for a commit, raises `exc`."""
        self._fatal = exc
        self._wake.set()
        self._committed_event.set()

    def metrics(self) -> SubtaskReport:
        return self._report()

    # --- the run loop ---------------------------------------------------------------------

    def _report(self, failure: Failure | None = None) -> SubtaskReport:
        steps = {op.step_id: (op.records_in, op.records_out) for op in self.ops}
        if self.dead_letters is not None:
            steps[self.dead_letters.step_id] = (self.dead_letters.records_in, 0)
        if self.source_step is not None:
            steps[self.source_step.step_id] = (0, self.source_out)
        chans = [ch for edge in self.outputs for ch in edge.channels]
        return SubtaskReport(
            self.spec.chain_name, self.spec.subtask, steps, failure=failure,
            max_in_flight_seen=max((ch.max_in_flight_seen for ch in chans), default=0),
            max_queued_seen=self.inbox.max_queued_seen if self.inbox else 0,
            aligning=self.alignment.current,
            errors={op.step_id: op.errors for op in self.ops if op.errors},
        )

    async def run(self) -> SubtaskReport:
        """Process until the end of every input; returns the report (with the failure, if any)."""
        report = await self._run_guarded()
        if report.failure is not None:
            self._abandon_in_flight()
        return report

    async def _run_body(self) -> SubtaskReport:
        if self._fatal is not None:
            raise self._fatal
        if self.source_step is not None:
            await self._run_source()
        else:
            await self._run_inputs()
        for edge in self.outputs:
            await edge.broadcast(END, None)
        for edge in self.outputs:
            await edge.drain()
        while self._committed < self._last_barrier:  # run step 5: wait until our last checkpoint is committed
            self._committed_event.clear()
            await self._committed_event.wait()
            if self._fatal is not None:
                raise self._fatal
        report = self._report()
        results = {op.step_id: op.close() for op in self.ops + ([self.dead_letters] if self.dead_letters else [])}
        report.sink_results = {k: v for k, v in results.items() if v is not None}
        return report

    def _abandon_in_flight(self) -> None:
        """After a failure nobody waits for the pushes in flight; drop them quietly."""
        for edge in self.outputs:
            for ch in edge.channels:
                for fut in ch.in_flight:
                    fut.cancel()

    async def _run_guarded(self) -> SubtaskReport:
        try:
            return await self._run_body()
        except RecordFailure as exc:
            return self._report(Failure("record", exc.step_id, exc.record_repr, exc.error, exc.traceback_text))
        except SourceError as exc:
            step = self.source_step.step_id if self.source_step else self.spec.chain_name
            return self._report(Failure("source", step, "", str(exc), traceback.format_exc()))
        except ray.exceptions.RayError as exc:  # a peer died; the coordinator knows why
            logger.info("%s stopped: %s", self.name, type(exc).__name__)
            return self._report(Failure("peer", self.name, "", f"{type(exc).__name__}: {exc}", ""))
        except Exception as exc:  # a bug or an infrastructure error: report it, never hang
            logger.exception("%s failed", self.name)
            return self._report(Failure("internal", self.name, "", f"{type(exc).__name__}: {exc}",
                                        traceback.format_exc()))

    async def _emit(self, batch: Any) -> None:
        out = run_chain(self.ops, batch) if self.ops else batch
        if self._dead:  # dead letters of this batch join the same checkpoint as its output
            dead, self._dead = self._dead, []
            self.dead_letters.process(dead)
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
        inbox, alignment = self.inbox, self.alignment
        ended = 0
        while ended < inbox.n:
            if self._fatal is not None:
                raise self._fatal
            deadline = self._next_deadline()
            item = await inbox.get(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if item is None:
                await self._flush_due()
                continue
            channel, kind, payload, fut = item
            try:
                if kind == BATCH:
                    await self._emit(payload)
                    continue
                done: Aligned | None
                if kind == BARRIER:
                    done = alignment.on_barrier(channel, payload)
                else:
                    ended += 1
                    done = alignment.on_end(channel)
                inbox.blocked = alignment.blocked
                if self.faults and done is None and alignment.current is not None:
                    self.faults.hit("mid_alignment", alignment.current)
                if done is not None:
                    await self._checkpoint(done.checkpoint_id, done.waited)
            finally:
                fut.set_result(None)
                if deadline is not None and deadline <= time.monotonic():
                    await self._flush_due()
        for edge in self.outputs:
            await edge.flush_all()

    async def _run_source(self) -> None:
        active = list(self.parts.items())
        track = self.spec.errors.mode == "dead_letter"
        told_finished = False
        emitted_since_barrier = False
        amo = self.spec.guarantee == Guarantee.AT_MOST_ONCE
        while True:
            if self._fatal is not None:
                raise self._fatal
            while self._barrier_requests:
                if self.faults and emitted_since_barrier:
                    self.faults.hit("batch_before_barrier", self._barrier_requests[0][0])
                emitted_since_barrier = False
                checkpoint_id, final = self._barrier_requests.popleft()
                await self._checkpoint(checkpoint_id, 0.0)
                if final:
                    return
            if self._stopping:
                active = []
            if not active:
                if not told_finished:  # wait for the final barrier
                    await self.coordinator.source_finished.remote(self.spec.attempt, self.spec.chain_name,
                                                                  self.spec.subtask)
                    told_finished = True
                self._wake.clear()
                if not self._barrier_requests:
                    await self._wake.wait()
                continue
            progressed = False
            for key, part in list(active):
                if track:
                    self._source_at = {"partition": key, "offset": part.snapshot()}
                batch = part.next_batch()
                if batch is None:
                    part.close()
                    active.remove((key, part))
                elif batch_len(batch):
                    progressed = True
                    if amo:  # at-most-once: the offset is durable before the batch leaves
                        await self._save_progress(key, part.snapshot())
                    self.source_out += batch_len(batch)
                    if self.source_tally is not None:
                        self.source_tally.add(batch.to_pylist() if isinstance(batch, pa.RecordBatch) else batch)
                    await self._emit(batch)
                    emitted_since_barrier = True
            await self._flush_due()
            if not progressed and active:
                wake = [w for w in (p.next_awake() for _, p in active) if w is not None]
                deadline = self._next_deadline()
                delays = [0.05] + [w - time.time() for w in wake]
                if deadline is not None:
                    delays.append(deadline - time.monotonic())
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), max(0.0, min(delays)))
                except asyncio.TimeoutError:
                    pass
            else:
                await asyncio.sleep(0)  # let control calls (barriers, stop, metrics) in

    async def _save_progress(self, partition: str, offset: Any) -> None:
        spec = self.spec
        await asyncio.get_running_loop().run_in_executor(
            None, self.store.save_progress, spec.run_id, self.source_step.step_id, spec.attempt, partition, offset)

    # --- checkpointing ----------------------------------------------------------------------
