"""The subtask actor: one parallel instance of a chain of steps. It owns parts that hold
no Ray handle and are tested alone (SourceReader, RecordPolicies, SubtaskCheckpoints,
ChainClock, Emitter) and runs the loop that connects them to its peers and the
coordinator.

A subtask with inputs takes the next message from an unblocked input (round-robin) or
wakes up when an output buffer is due (linger). A batch goes through the chain and out;
a barrier goes to the alignment (C2) and, when aligned, the subtask checkpoints (C3-C4);
a watermark goes to the clock, which fires windows and timers. A message is
acknowledged (its push call returns) only after that, so a slow consumer stalls its
producers. After end-of-stream on every input, the subtask waits until its last
checkpoint is committed (C6), then its operators close.

A source subtask runs the turns of source_turns.py instead of the input loop.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from typing import Any

import ray

from raystream._runtime.checkpointing.alignment import Aligned, Alignment
from raystream._runtime.subtask.assembly import build_clock, build_operators, tune_gc
from raystream._runtime.transport.blocking import in_thread
from raystream._runtime.transport.channel import BARRIER, BATCH, END, WATERMARK, Inbox
from raystream._runtime.state.store import CheckpointStore
from raystream._runtime.subtask.clock import ChainClock
from raystream._runtime.subtask.emitter import Emitter
from raystream._runtime.plan.failure import Failure, failure_of
from raystream.testing.injector import Injector, install_s3_faults
from raystream._runtime.subtask.metrics import SubtaskExporter
from raystream._runtime.operators.plain import SinkOp
from raystream._runtime.operators.base import KeyedOp, Operator, run_chain
from raystream._runtime.subtask.record_policies import RecordPolicies
from raystream._runtime.checkpointing.recovery import load_state
from raystream._runtime.checkpointing.rescale import RestoredState
from raystream._runtime.state.snapshot import SinkState, SnapshotMeta, SubtaskState
from raystream._runtime.subtask.source_reader import SourceReader, source_batch_size
from raystream._runtime.subtask.source_turns import SourceTurns
from raystream._runtime.plan.specs import OutputSpec, RestoreSpec, SubtaskReport, SubtaskSpec
from raystream._runtime.checkpointing.subtask_side import SubtaskCheckpoints
from raystream._runtime.operators.event_time import AssignTimeOp
from raystream._runtime.operators.columnar_join import ArrowJoinOp
from raystream._runtime.operators.windows import JoinOp
from raystream._runtime.transport.packing import unpack
from raystream.config import Guarantee
from raystream.errors import SourceError
from raystream.graph import StepKind

logger = logging.getLogger(__name__)


@ray.remote
class SubtaskActor(SourceTurns):
    """Started blank (a spare, `_runtime/control/actors.py`), then `configure`d once for one
    subtask of one attempt; never reused after that."""

    def __init__(self) -> None:
        self.spec: SubtaskSpec | None = None

    def configure(self, spec: SubtaskSpec) -> int:
        """Become subtask `spec`; returns this process's id."""
        if self.spec is not None:
            raise RuntimeError(f"{self.name} is configured already; a subtask actor serves one attempt")
        if spec.runtime.faults:
            install_s3_faults(spec.runtime.faults)
        tune_gc()
        self.spec = spec
        self.name = f"{spec.chain_name}[{spec.subtask}]"
        self.store = CheckpointStore(spec.checkpoint_root)
        self.faults = Injector(spec.runtime.faults, attempt=spec.attempt, subtask=spec.subtask,
                               steps=tuple(s.step_id for s in spec.steps),
                               claims=self.store.storage, run_id=spec.run_id)
        head = spec.steps[0]
        self.source = (SourceReader(head, spec.source_partitions, source_batch_size(head, spec.runtime))
                       if head.kind is StepKind.SOURCE else None)
        self.ops: list[Operator] = []
        self.sinks: list[SinkOp] = []  # sink writers of the chain, the dead-letter writer last
        self.policies: RecordPolicies | None = None
        self.inbox = Inbox(spec.n_inputs) if spec.n_inputs else None
        self.alignment = Alignment(spec.n_inputs, aligned=spec.guarantee == Guarantee.EXACTLY_ONCE)
        self.out: Emitter | None = None  # what leaves the subtask, from setup on
        self.coordinator: Any = None
        self.checkpoints = SubtaskCheckpoints(
            name=self.name, store=self.store, run_id=spec.run_id, attempt=spec.attempt, chain=spec.chain_name,
            subtask=spec.subtask, faults=self.faults, on_fatal=self._fail, config=spec.checkpoint)
        self._fatal: BaseException | None = None
        self._stopping = False
        self._barrier_requests: collections.deque[tuple[int, bool]] = collections.deque()
        self._emitted_since_barrier = False
        self._told_finished = False  # a source subtask told the coordinator it is exhausted
        self._final_out = False  # a source subtask sent its final barrier: it reads nothing more
        self._wake = asyncio.Event()
        self.exporter = SubtaskExporter(spec.job_name, spec.chain_name, spec.subtask)
        self.clock: ChainClock | None = None
        self.assign_at_source: AssignTimeOp | None = None
        return os.getpid()

    # --- control calls from the coordinator ---------------------------------------------

    def pid(self) -> int:
        return os.getpid()

    async def until_killed(self) -> None:
        """Never returns: the coordinator awaits this call after killing the actor, and its
        ActorDiedError says that the process is gone (R1)."""
        await asyncio.Event().wait()

    async def setup(self, restore: RestoreSpec | None, outputs: list[OutputSpec], coordinator: Any,
                    progress: dict[str, Any] | None = None) -> dict[str, int]:
        """R4: build the operators from the restored state (if any), recover the sinks,
        open the source partitions and connect the outputs. `progress`: at-most-once, the
        offsets sources saved before their last batches, which win over the checkpoint's.
        Returns how many snapshots were read per tier."""
        spec, rt = self.spec, self.spec.runtime
        self.coordinator = coordinator
        state = None
        if restore is not None:
            state = await load_state(restore, self.store, spec.steps, spec.subtask, spec.parallelism,
                                     rt.max_parallelism)
            own = state.parts is not None and state.parts[-1].key.startswith(f"{spec.run_id}/")
            self.checkpoints.changelog.restored(state.parts if own else None)  # I5
            if self.faults:
                self.faults.hit("restore", state.checkpoint_id)
        self.ops = build_operators(spec, state)
        if self.ops and isinstance(self.ops[0], AssignTimeOp) and self.ops[0].at_source:
            self.assign_at_source = self.ops[0]
        self.clock = build_clock(self.ops, spec)
        self.policies = RecordPolicies(spec, self.ops, state)
        dead_letters = [self.policies.dead_letters] if self.policies.dead_letters is not None else []
        self.sinks = [op for op in self.ops if isinstance(op, SinkOp)] + dead_letters
        self.checkpoints.attach(self.sinks, self._ack)
        if state is not None or spec.attempt > 1:
            await self._recover_sinks(state)
        if self.source is not None:
            self._open_source(state, progress)
        self.out = Emitter.connect(self.name, outputs, rt, self.ops, self.clock, spec.steps[-1].step_id)
        return state.tiers if state is not None else {}

    async def _recover_sinks(self, state: RestoredState | None) -> None:
        """R4: commit what the restored checkpoint pre-committed; abort the rest (F4)."""
        for op in self.sinks:
            if op.transactional:
                txns = state.sink_txns.get(op.step_id, []) if state else []
                await in_thread(op.writer.recover, txns, state.checkpoint_id if state else 0)

    def _open_source(self, state: RestoredState | None, progress: dict[str, Any] | None) -> None:
        try:
            self.source.open_from(state, progress, self.spec.all_partitions if self.spec.subtask == 0 else None)
        except SourceError as exc:  # reported when the run starts
            self._fatal = exc

    async def push(self, channel: int, seq: int, kind: int, payload: Any) -> None:
        await self.inbox.put(channel, seq, kind, unpack(payload) if kind == BATCH else payload)

    def trigger_checkpoint(self, checkpoint_id: int, final: bool = False) -> None:
        """C1, source subtasks: emit barrier `checkpoint_id` after the current batch."""
        self._barrier_requests.append((checkpoint_id, final))
        self._wake.set()

    async def next_snapshot(self) -> bytes:
        return await self.checkpoints.next_snapshot()

    def notify_aborted(self, checkpoint_id: int) -> None:
        """C6a: checkpoint `checkpoint_id` was aborted; its manifest will never exist."""
        self.checkpoints.abort(checkpoint_id)

    async def notify_complete(self, checkpoint_id: int) -> None:
        await self.checkpoints.commit(checkpoint_id)
        if self.source is not None:
            self.source.completed(checkpoint_id)

    def stop_source(self) -> None:
        """End this source's stream after the current batch."""
        self._stopping = True
        self._wake.set()

    def metrics(self) -> SubtaskReport:
        """Counters for the coordinator, exported through ray.util.metrics on the way."""
        report = self._report()
        self.exporter.export(report)
        return report

    def __repr__(self) -> str:  # Ray prefixes this actor's log lines with it
        return f"raystream:{self.spec.job_name}:{self.name}" if self.spec is not None else "raystream:spare"

    def _fail(self, exc: BaseException) -> None:
        """Stop this subtask: the run loop, or the wait for a commit, raises `exc`."""
        self._fatal = exc
        self._wake.set()
        self.checkpoints.interrupt(exc)

    def _raise_if_failed(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    async def _ack(self, checkpoint_id: int, meta: SnapshotMeta, error: str | None) -> None:
        try:
            await self.coordinator.ack.remote(self.spec.attempt, checkpoint_id, meta, error)
        except ray.exceptions.RayError:
            pass  # the coordinator is gone; a new one restores from durable storage

    # --- the run ------------------------------------------------------------------------

    def _report(self, failure: Failure | None = None) -> SubtaskReport:
        steps = {op.step_id: (op.records_in, op.records_out) for op in self.ops}
        dead_letters = self.policies.dead_letters if self.policies else None
        if dead_letters is not None:
            steps[dead_letters.step_id] = (dead_letters.records_in, 0)
        if self.source is not None:
            steps[self.source.step.step_id] = (0, self.source.emitted)
        chans = self.out.channels if self.out is not None else []
        return SubtaskReport(
            self.spec.chain_name, self.spec.subtask, steps, failure=failure,
            max_in_flight_seen=max((ch.max_in_flight_seen for ch in chans), default=0),
            max_queued_seen=self.inbox.max_queued_seen if self.inbox else 0,
            aligning=self.alignment.current,
            errors={op.step_id: op.errors for op in self.ops if op.errors},
            backpressure=sum(ch.blocked for ch in chans),
            state_keys={op.step_id: op.state_keys() for op in self.ops if isinstance(op, KeyedOp)},
            snapshot_bytes=self.checkpoints.last_size, alignment=self.checkpoints.last_alignment,
            late={op.step_id: op.late_records for op in self.ops if isinstance(op, KeyedOp) and op.late_records},
            watermark=self.clock.watermark if self.clock is not None else None,
        )

    async def run(self) -> SubtaskReport:
        """Process until the end of every input; returns the report (with the failure, if any)."""
        try:
            return await self._run_body()
        except Exception as exc:
            failure = failure_of(exc, self.name, self.source.step.step_id if self.source else None)
        if self.out is not None:
            self.out.cancel_in_flight()
        return self._report(failure)

    async def _run_body(self) -> SubtaskReport:
        self._raise_if_failed()
        if self.source is not None:
            await self._run_source()
        else:
            await self._run_inputs()
        await self.out.broadcast(END, None)
        await self.out.drain()
        await self.checkpoints.wait_committed(lambda: self._fatal)
        report = self._report()
        results = {op.step_id: op.close() for op in self.ops + [op for op in self.sinks if op not in self.ops]}
        report.sink_results = {k: v for k, v in results.items() if v is not None}
        self.exporter.export(report)
        return report

    async def _emit(self, batch: Any, channel: int | None = None) -> None:
        if self.spec.input_sides:  # a join at the head: its input's side comes with the batch
            head = self.ops[0]
            assert isinstance(head, (JoinOp, ArrowJoinOp))
            out = run_chain(self.ops[1:], head.process_side(batch, self.spec.input_sides[channel]))
        else:
            out = run_chain(self.ops, batch) if self.ops else batch
        self.policies.flush_dead_letters()
        await self.out.send(out)
        await self.out.deliver(self.clock.tick())

    async def _checkpoint(self, checkpoint_id: int, alignment: float) -> None:
        """C3-C4 (SubtaskCheckpoints.take) with this subtask's state and outputs."""
        await self.checkpoints.take(checkpoint_id, alignment, lambda: self._capture(checkpoint_id),
                                    self._forward_barrier, self.source.emitted if self.source else 0)

    def _capture(self, checkpoint_id: int) -> SubtaskState:
        spec = self.spec
        keyed, changelog, parts = self.checkpoints.changelog.capture(op for op in self.ops if isinstance(op, KeyedOp))
        return SubtaskState(
            checkpoint_id=checkpoint_id, chain=spec.chain_name, subtask=spec.subtask, parallelism=spec.parallelism,
            source_offsets=self.source.snapshot(checkpoint_id) if self.source else {},
            keyed=keyed, changelog=changelog, parts=parts,
            watermarks={op.step_id: op.watermark for op in self.ops
                        if isinstance(op, KeyedOp) and op.watermark is not None},
            group_watermarks={op.step_id: dict(op.group_watermarks) for op in self.out.window_ops
                              if op.group_watermarks},
            event_times={op.step_id: op.event_times() for op in self.ops if isinstance(op, AssignTimeOp)},
            sinks={op.step_id: SinkState(op.writer.snapshot(), list(op.pending)) for op in self.sinks},
            counters=self._report().steps,
            audit=self.policies.audit_state(),
            errors={op.step_id: op.errors for op in self.ops if op.errors},
            late={op.step_id: op.late_records for op in self.out.window_ops if op.late_records},
            step_meta={op.step_id: meta for op in self.ops if isinstance(op, KeyedOp)
                       and (meta := op.state_meta()) is not None},
        )

    async def _forward_barrier(self, checkpoint_id: int) -> None:
        await self.out.broadcast(BARRIER, checkpoint_id)

    # --- a subtask with inputs ------------------------------------------------------------

    async def _run_inputs(self) -> None:
        inbox, alignment = self.inbox, self.alignment
        ended = 0
        while ended < inbox.n:
            self._raise_if_failed()
            deadline = self.out.next_deadline()
            item = await inbox.get(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if item is None:
                await self.out.flush_due()
                continue
            channel, kind, payload, fut = item
            try:
                if kind == BATCH:
                    await self._emit(payload, channel)
                    continue
                if kind == WATERMARK:
                    await self.out.deliver(self.clock.on_input(channel, payload))
                    continue
                done: Aligned | None
                if kind == BARRIER:
                    done = alignment.on_barrier(channel, payload)
                else:
                    ended += 1
                    self.clock.on_input_end(channel)
                    done = alignment.on_end(channel)
                inbox.blocked = alignment.blocked
                if self.faults and done is None and alignment.current is not None:
                    self.faults.hit("mid_alignment", alignment.current)
                if done is not None:
                    await self._checkpoint(done.checkpoint_id, done.waited)
            finally:
                fut.set_result(None)  # the acknowledgement: the sender may send more
                if deadline is not None and deadline <= time.monotonic():
                    await self.out.flush_due()
        await self.out.flush_all()
