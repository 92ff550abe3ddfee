"""The simulated job: P source partitions of integers, a running sum per partition, and
the sinks a schedule picks, in one chain run by N subtasks.

Partition p is read by the subtask that owns key p's key group at N (`owner`), which is
also where its keyed sum lives, so no shuffle is needed and a rescale moves a partition's
offset and its sum together (the real `rescale.merge_states` moves both). Each record is
written to every sink as {"id", "p", "total", "run"}: its id, its partition, the running
sum of its partition so far, and the run that wrote it.

The real code in a subtask: `SourceReader` (offsets, partitions new or gone),
`SubtaskCheckpoints` (C3, C4, C6, C6a: pre-commit, capture, upload, acknowledge, settle,
fence and commit), `SinkOp` with the sink writers (`FileSink` plain, rolling locally and
on S3, Parquet; `PostgresWriter` appending and upserting), snapshot encoding, and the
restore merge. Only time, storage and the servers are simulated.

With a schedule's options (source.py), the real operators before the sinks: the
columnar aggregate of Arrow batches (keyed by a column whose keys share their
partition's key group, so it needs no exchange either: columnar.py), or an event-time
tumbling window over them (windowed.py), and the source's event time, read in rounds of
batches that take simulated time (event_time.py).
"""
from __future__ import annotations

import asyncio
import functools
import collections
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from raystream.connectors.postgres.writer import PostgresWriter
from raystream.testing.injector import Injector
from raystream._runtime.transport.keys import key_group, subtask_of_group
from raystream._runtime.operators.base import KeyedOp, run_chain
from raystream._runtime.operators.event_time import AssignTimeOp
from raystream._runtime.operators.plain import SinkOp
from raystream._runtime.operators.windows import TimedWindows
from raystream._runtime.transport.channel import BATCH
from raystream._runtime.plan.specs import SubtaskSpec
from raystream._runtime.subtask.assembly import build_clock, build_operators
from raystream._runtime.checkpointing.rescale import RestoredState, combine_writer_states
from raystream._runtime.state.store import CheckpointStore
from raystream._runtime.state.snapshot import SinkState, SubtaskState
from raystream._runtime.subtask.source_reader import SourceReader
from raystream._runtime.checkpointing.subtask_side import SubtaskCheckpoints
from raystream.config import Guarantee, RuntimeConfig
from raystream.graph import Step, StepKind
from raystream.sinks import SinkContext

from .columnar import AGG_SINK, Columns
from .event_time import Lateness
from .keyed_state import SimMerger, Sums, capture
from .windowed import WIN_SINK, WINDOW_STEP, Windowing
from .fake_pg import SimPgServer
from .world import Proc, Remote, World, blocking_for

MAX_PARALLELISM = 128
JOB = "sim"


def owner(partition: int, parallelism: int, max_parallelism: int = MAX_PARALLELISM) -> int:
    return subtask_of_group(key_group(partition, max_parallelism), parallelism, max_parallelism)


@dataclass
class Outputs:
    """The sinks of one line of runs (a run and the runs continuing it), by step id."""

    sinks: dict[str, Any]
    pg: SimPgServer | None = None
    place: str = ""  # "" for the shared directories, else this line's own
    # the steps of the real operators before the sinks, the source's first (columnar.operator_steps)
    operators: list[Step] = field(default_factory=list)

    def steps(self) -> list[Step]:
        middle = [s for s in self.operators if s.kind is not StepKind.SOURCE]
        inputs = {AGG_SINK: ("agg",), WIN_SINK: (WINDOW_STEP,)}
        return [Step("src", "source", ()), Step("sum", "reduce", ("src",))] + middle + [
            Step(step_id, "sink", inputs.get(step_id, ("sum",)), sink=sink) for step_id, sink in self.sinks.items()]

    def chain(self) -> str:
        return "+".join(s.step_id for s in self.steps())


class SimSubtask:
    """One subtask of the chain: reads its partitions, sums, writes every sink, and takes
    part in the checkpoint protocol through the real SubtaskCheckpoints, as SubtaskActor
    does (C3, C4, C6, C6a)."""

    def __init__(self, run: Any, coord: Any, index: int, parallelism: int, attempt: int,
                 state: RestoredState | None):
        self.run, self.coord, self.index, self.parallelism, self.attempt = run, coord, index, parallelism, attempt
        self.world: World = run.world
        self.proc = Proc(f"{run.run_id}:subtask{index}@a{attempt}")
        self.blocking = blocking_for(self.world, self.proc)
        present = run.source.present
        mine = [str(p) for p in present if owner(p, parallelism, run.scenario.max_parallelism) == index]
        timing = run.source.timing
        self.lateness = Lateness(timing, self.proc.name, run.trace.late, run.trace.idle) if timing is not None else None
        source = run.source.reading(self.world, f"{run.scenario.seed}/{self.proc.name}", self.lateness)
        self.reader = SourceReader(Step("src", "source", (), source=source), mine, batch_size=4)
        self.reader.open(dict(state.source_offsets) if state else {}, restored=bool(state and state.source_restored),
                         all_partitions=[str(p) for p in present] if index == 0 else None)
        self.sums = Sums(dict(state.keyed.get("sum", {})) if state else {}, run.config.incremental)
        self.restored_from = state.checkpoint_id if state else 0
        self.chain_ops, self.clock = self._operators(state, mine, [str(p) for p in present])
        self.window_op = next((op for op in self.chain_ops if isinstance(op, TimedWindows)), None)
        if self.lateness is not None and state is not None:  # the newest times the restore gave the partitions
            restored = state.event_times.get(self.chain_ops[0].step_id, {})
            self.lateness.newest.update({int(p): t for p, t in restored.items() if p in mine})
        self._named: set[int] = set()  # partitions this attempt wrote a row of with every column
        self.ops: dict[str, SinkOp] = {}
        self.restored_txns: dict[str, list[Any]] = {}
        run.scenario.procs[(run.run_id, index, attempt)] = self.proc
        for step in run.outputs.steps():
            if step.kind is not StepKind.SINK:
                continue
            resume = combine_writer_states(step.sink, step.step_id, state.sink_states.get(step.step_id, [])) \
                if state else None
            ctx = SinkContext(step.step_id, index, parallelism, transactional=True, resume_state=resume,
                              run_id=run.run_id, attempt=attempt, job_name=JOB)
            self.ops[step.step_id] = op = SinkOp(step, ctx)
            op.commit_all = functools.partial(self._landed, op.commit_all)  # type: ignore[method-assign]
            self.restored_txns[step.step_id] = state.sink_txns.get(step.step_id, []) if state else []
        self.captures = 0  # snapshots captured so far (a slow merge spans some: keyed_state.py)
        self.snapshot_suffix = CheckpointStore.snapshot_key(run.run_id, 0, attempt, run.outputs.chain(),
                                                            index).rsplit("/", 1)[1]
        self.checkpoints = SubtaskCheckpoints(
            name=self.proc.name, store=run.store, run_id=run.run_id, attempt=attempt, chain=run.outputs.chain(),
            subtask=index, faults=Injector((), attempt=attempt), on_fatal=self._fatal, blocking=self.blocking,
            config=run.config, merger=SimMerger(self))
        if state is not None:  # I5, as SubtaskActor.setup: its own parts of this run go on
            own = state.parts is not None and state.parts[-1].key.startswith(f"{run.run_id}/")
            self.checkpoints.changelog.restored(state.parts if own else None)
        self.checkpoints.attach(list(self.ops.values()), self._ack)
        self.barriers: collections.deque[tuple[int, bool]] = collections.deque()
        self.asked_at: dict[int, float] = {}  # checkpoint -> when its barrier was asked for
        self.batch_done_at = -1.0  # when the latest batch of a round was through the chain
        self._commit_order = asyncio.Lock()
        self._committing = 0  # the checkpoint whose commit runs now
        self._landed_for: set[int] = set()
        self.busy: asyncio.Future | None = None  # a checkpoint being taken: nothing else happens meanwhile
        self.stopping = False
        self.final_taken = self.told_finished = self.finished = self.failed = False
        self.trigger_checkpoint = Remote(self.world, self.proc, self._on_trigger)
        self.next_snapshot = Remote(self.world, self.proc, lambda: None)
        self.notify_complete = Remote(self.world, self.proc, self._on_notify)
        self.notify_aborted = Remote(self.world, self.proc, self.checkpoints.abort)
        self.stop_source = Remote(self.world, self.proc, self._on_stop)

    def _operators(self, state: RestoredState | None, mine: list[str], present: list[str]) -> tuple[list, Any]:
        """The real operators before the sinks, built and restored from `state` by
        `assembly.build_operators` as a subtask builds them, and the chain's clock (with
        event time)."""
        run, timing = self.run, self.run.source.timing
        if not run.outputs.operators:
            return [], None
        spec = SubtaskSpec(JOB, run.outputs.chain(), run.outputs.operators, self.index, self.parallelism, 0,
                           RuntimeConfig(watermark_interval=timing.interval if timing else 0.2,
                                         max_parallelism=run.scenario.max_parallelism),  # the restore merge's
                           Guarantee.EXACTLY_ONCE, "", run.run_id, self.attempt, source_partitions=mine,
                           all_partitions=present)
        ops = build_operators(spec, state)
        return ops, build_clock(ops, spec) if timing is not None else None

    def kill(self) -> None:
        """The process dies: the database rolls back its open transactions."""
        self.proc.alive = False
        for op in self.ops.values():
            if isinstance(op.writer, PostgresWriter):
                op.writer._db.close()

    def _fatal(self, exc: BaseException) -> None:
        """SubtaskActor._fail: the subtask stops; what waits in SubtaskCheckpoints ends."""
        self.run.note_sink_error(self, exc)
        self.failed = True
        self.checkpoints.interrupt(exc)

    async def _ack(self, checkpoint_id: int, meta: Any, error: str | None) -> None:
        self.world.send(self.coord.proc, self.coord.ack, self.attempt, checkpoint_id, meta, error)

    # --- R4: recover the sinks ------------------------------------------------------------

    def recover(self, checkpoint_id: int) -> None:
        """T4 for every sink writer (run through `blocking`: it lands even if the process dies)."""
        self.run.log(f"{self.proc.name} recovers {checkpoint_id}{'' if self.proc.alive else ' (dead, in flight)'}")
        for step_id, op in self.ops.items():
            op.writer.recover(self.restored_txns[step_id], checkpoint_id)

    # --- the loop ---------------------------------------------------------------------------

    def start(self) -> None:
        self.world.at(self.world.rng.uniform(0.001, 0.02), self._step)

    def _on_trigger(self, checkpoint_id: int, final: bool) -> None:
        self.barriers.append((checkpoint_id, final))
        self.asked_at[checkpoint_id] = self.world.now

    def _on_stop(self) -> None:
        self.stopping = True

    def _step(self) -> None:
        if not self.proc.alive or self.final_taken or self.failed:
            return
        if self.busy is not None and not self.busy.done():
            self.world.at(self.world.rng.uniform(0.004, 0.04), self._step)
            return
        try:
            if self.barriers:
                checkpoint_id, final = self.barriers.popleft()
                self.busy = asyncio.ensure_future(self._checkpoint(checkpoint_id))
                if final:
                    self.final_taken = True
                    return
            elif self.stopping:
                self.reader.stop()
                self._tell_finished()
            elif not self.reader.exhausted:
                self._read()
            else:
                if self.window_op is not None:  # a bounded input ended: the end of time (a stop is not one)
                    self._clocked(self.clock.end_of_input())
                self._tell_finished()
        except Exception as exc:  # noqa: BLE001 - a sink failed: the subtask fails, the job restarts
            self._fatal(exc)
            return
        self.world.at(self.world.rng.uniform(0.004, 0.04), self._step)

    def _tell_finished(self) -> None:
        if not self.told_finished:
            self.told_finished = True
            self.world.send(self.coord.proc, self.coord.source_finished, self.attempt, self.index)

    def _read(self) -> None:
        if self.clock is not None:  # event time: rounds of batches that take time, as SubtaskActor reads
            self.busy = asyncio.ensure_future(self._read_round())
            return
        key, part = self.reader.active[self.world.rng.randrange(len(self.reader.active))]
        batch = part.next_batch()
        if batch is None:
            part.close()
            self.reader.active.remove((key, part))
            return
        self._emit(int(key), batch)

    async def _read_round(self) -> None:
        """SubtaskActor._run_source's turn: a batch of each partition, each through the
        chain, taking its simulated time, the clock ticking after it; then the ended
        partitions end in the generator, the empty ones count toward idleness, and the
        clock ticks (Emitter.flush_due)."""
        try:
            await self.reader.read_round(self._emit_polled, self._between_batches)
            if self.final_taken:
                return
            generator = self.chain_ops[0].generator
            for key in self.reader.ended:
                generator.end(key)
                self.lateness.end(int(key))
            generator.polled_empty(self.reader.empty)
            self._clocked(self.clock.on_time() + self.clock.tick())
        except Exception as exc:  # noqa: BLE001 - a sink failed: the subtask fails, the job restarts
            self._fatal(exc)

    async def _emit_polled(self, key: str, before: Any, after: Any, batch: Any) -> None:
        held = [c for c, _ in self.barriers if self.asked_at[c] <= self.batch_done_at]
        if held:  # C1: a barrier goes out after the batch it was asked for during
            self.run.trace.held.append(f"{self.proc.name}: the barrier of checkpoint {held[0]}, asked for at "
                                       f"{self.asked_at[held[0]]:.3f} s, waited past the batch then in the chain "
                                       f"(through at {self.batch_done_at:.3f} s) for the round's next one")
        self._emit(int(key), batch)
        await self.world.sleep(self.run.source.timing.cost(int(key)), self.proc)  # a slow chain
        self.batch_done_at = self.world.now
        self._clocked(self.clock.tick())

    async def _between_batches(self) -> bool:
        """SubtaskActor._barriers_between_batches: the barriers asked for while the batch
        went through the chain go out now; True (the round ends) once the final one is
        out, or when a stop came."""
        while self.barriers:
            checkpoint_id, final = self.barriers.popleft()
            await self._checkpoint(checkpoint_id)
            if final:
                self.final_taken = True
                return True
        return self.stopping

    def _emit(self, p: int, batch: Any) -> None:
        """One batch of partition `p`: through the real operators (event time, the
        aggregate or the window), the running sums, and every sink."""
        ids = batch.column("id").to_pylist() if isinstance(batch, pa.RecordBatch) else batch
        if self.lateness is not None:  # it goes out after the watermarks sent so far
            self.lateness.check(p, ids)
        if self.chain_ops and isinstance(self.chain_ops[0], AssignTimeOp):
            self.chain_ops[0].partition = str(p)
        out = run_chain(self.chain_ops, batch) if self.chain_ops else None
        rows = []
        swap = self.world.rng.random() < 0.2  # another column order now and then: another statement
        for record in ids:
            total = self.sums.add(p, record)
            row = {"id": record, "p": p, "total": total, "run": self.run.run_id}
            rows.append(dict(reversed(row.items())) if swap else row)
        # An upsert sets the columns a record names: now and then one names fewer. The first
        # batch an attempt writes of a partition names every column: a run from a savepoint
        # into a table of its own starts the partition's row there, past its first record.
        partial = [{k: v for k, v in r.items() if k != "id"} for r in rows] \
            if self.world.rng.random() < 0.3 and p in self._named else rows
        self._named.add(p)
        # Files take rows whose fields differ: every seventh id carries one more.
        noted = [{**r, "note": "seventh"} if r["id"] % 7 == 0 else r for r in rows]
        for step_id, op in self.ops.items():
            if step_id == AGG_SINK:
                op.process(Columns.rows(out, self.run.run_id))
            elif step_id == WIN_SINK:
                continue
            else:
                op.process(partial if step_id == "pg_totals" else rows if step_id == "pg_rows" else noted)
        if self.window_op is not None:
            self._windowed(out)

    def _clocked(self, messages: list[tuple[int, Any]]) -> None:
        """What the chain's clock sends after a batch, a round or the end of the input: the
        rows the window fired go to its sink (as SubtaskActor delivers them), the
        watermarks to the lateness account."""
        if self.window_op is not None:
            for kind, payload in messages:
                if kind == BATCH:
                    self._windowed(payload)
        self.lateness.sent(messages)

    def _windowed(self, out: Any) -> None:
        """The window's rows in `out` and the rows it found late since, into its sink (one
        sink for both: each sink's storage calls make checkpoints longer)."""
        # the checkpoint this attempt's output had reached: the row commits with a later one
        since = max(self.restored_from, self.checkpoints.last_barrier)
        rows = Windowing.rows(out, self.run.run_id, since) + \
            Windowing.late_rows(self.window_op.take_late_batches(), self.run.run_id, since)
        if rows:
            self.ops[WIN_SINK].process(rows)

    # --- C3, C4 (SubtaskCheckpoints.take) ---------------------------------------------------

    async def _checkpoint(self, checkpoint_id: int) -> None:
        try:
            await self.checkpoints.take(checkpoint_id, 0.0, lambda: self._capture(checkpoint_id),
                                        lambda n: asyncio.sleep(0))
        except Exception as exc:  # noqa: BLE001 - a pre-commit failed, or the wait to settle ended
            if not self.failed:
                self._fatal(exc)

    def _capture(self, checkpoint_id: int) -> SubtaskState:
        """C3, as SubtaskActor._capture takes it (the real operators' keyed state, meta and
        event times too)."""
        self.captures += 1
        ops = [self.sums, *(op for op in self.chain_ops if isinstance(op, KeyedOp))]
        key = CheckpointStore.snapshot_key(self.run.run_id, checkpoint_id, self.attempt, self.run.outputs.chain(),
                                           self.index)
        keyed, changelog, parts = capture(self.checkpoints.changelog, ops, key, self.run.trace)  # I2, and the oracles'
        return SubtaskState(checkpoint_id, self.run.outputs.chain(), self.index, self.parallelism,
                            source_offsets=self.reader.offsets(), keyed=keyed, changelog=changelog, parts=parts,
                            watermarks={op.step_id: op.watermark for op in self.chain_ops
                                        if isinstance(op, KeyedOp) and op.watermark is not None},
                            late={op.step_id: op.late_records for op in self.chain_ops
                                  if isinstance(op, TimedWindows) and op.late_records},
                            group_watermarks={op.step_id: dict(op.group_watermarks) for op in self.chain_ops
                                              if isinstance(op, TimedWindows) and op.group_watermarks},
                            sinks={s: SinkState(op.writer.snapshot(), list(op.pending)) for s, op in self.ops.items()},
                            event_times={op.step_id: op.event_times() for op in self.chain_ops
                                         if isinstance(op, AssignTimeOp)},
                            step_meta={op.step_id: meta for op in self.chain_ops
                                       if isinstance(op, KeyedOp) and (meta := op.state_meta()) is not None})

    # --- C6 ----------------------------------------------------------------------------------

    def _on_notify(self, checkpoint_id: int) -> None:
        asyncio.ensure_future(self._commit(checkpoint_id))

    async def _commit(self, checkpoint_id: int) -> None:
        """SubtaskCheckpoints.commit: the fence, then each sink commits checkpoints up to n.
        Commits run one at a time there; this lock (also first come, first served) only
        names the one running, for `_landed`."""
        async with self._commit_order:
            self._committing = checkpoint_id
            try:
                await self.checkpoints.commit(checkpoint_id)
            except Exception:  # noqa: BLE001 - on_fatal has the error
                return
        if self.final_taken and self.checkpoints.committed >= self.checkpoints.last_barrier and not self.finished \
                and not self.failed and self.busy is not None and self.busy.done():
            self._close()

    def _landed(self, commit_all: Any, txns: list[Any]) -> None:
        """A sink's commit lands (in storage time: also when its process died meanwhile)."""
        commit_all(txns)
        checkpoint_id = self._committing
        if checkpoint_id not in self._landed_for:
            self._landed_for.add(checkpoint_id)
            self.run.log(f"{self.proc.name} committed for {checkpoint_id}{'' if self.proc.alive else ' (dead)'}")
            self.run.trace.commits.append((self.run.run_id, self.attempt, checkpoint_id))
            self.run.scenario.on_committed(self.run, checkpoint_id)

    def _close(self) -> None:
        """The end of the stream, once the last checkpoint is committed: writers close."""
        try:
            for op in self.ops.values():
                op.close()
        except Exception as exc:  # noqa: BLE001
            self._fatal(exc)
            return
        self.finished = True
