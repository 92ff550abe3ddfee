"""The job coordinator: a Ray actor that runs the job's attempts, checkpoints them
(checkpointing/coordinator_side.py) and recovers from failures (docs/protocol.md, R1-R5):
`_end_attempt` (R1), the restart strategy (R2), `_begin_attempt` (R3, with
`recovery.choose_checkpoint`), `wiring.restore_spec` and `actors.start_subtasks` (R4),
`_go_live` (R5).

The coordinator keeps nothing that exists only in its memory: if it dies, its subtasks
die with it (Ray ends actors with their owner) and a new coordinator resumes the run
from durable storage.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from typing import Any

import ray

from raystream._runtime.control.actors import SubtaskSpares, kill_subtasks, spare_count, start_subtasks
from raystream._runtime.transport.blocking import in_thread
from raystream._runtime.state.store import CheckpointRef, CheckpointStore
from raystream._runtime.checkpointing.coordinator_side import Checkpointer
from raystream._runtime.plan.physical import SubtaskKey
from raystream._runtime.plan.failure import Failure, FailureKind, Repeats, most_specific
from raystream.testing.injector import Injector, install_s3_faults
from raystream._runtime.state.manifest import Manifest
from raystream._runtime.control.metrics import JobExporter, MetricsTable
from raystream._runtime.plan.physical import PhysicalPlan
from raystream._runtime.checkpointing.recovery import RestartTracker, begin_attempt, read_progress
from raystream._runtime.checkpointing.rescale import check_matches
from raystream._runtime.control.reports import JobOutcome, sink_outputs, sum_steps
from raystream._runtime.plan.specs import RunOptions, SubtaskReport
from raystream._runtime.control.wiring import Wiring
from raystream.config import Guarantee
from raystream.errors import CorruptCheckpointError, JobFailedError, RestoreError, StagedDataMissingError
from raystream.graph import JobGraph, StepKind
from raystream.result import CheckpointStats, JobResult, JobStatus, Recovery

logger = logging.getLogger(__name__)

_TICK = 0.05
_METRICS_EVERY = 0.5
_FIRST_AFTER_FAILURE = 0.1  # C1: seconds to the first checkpoint of the attempt after a failure


def actor_name(job_name: str, run_id: str, what: str) -> str:
    """Names make a run's actors findable (ray list actors, tests) and never collide."""
    return f"raystream:{job_name}:{run_id}:{what}"


@ray.remote(num_cpus=0)
class JobCoordinator:
    def __init__(self, *configure_args: Any, spares: int = 0):
        """Configured at once with `configure_args`, or blank with `spares` blank subtask
        actors (a spare coordinator, kept by the driver for its next job) until `configure`."""
        self.job: JobGraph | None = None
        self.spares = SubtaskSpares(spares)
        self.spares.fill()
        if configure_args:
            self.configure(*configure_args)

    def configure(self, job: JobGraph, plan: PhysicalPlan, run_id: str, checkpoint_root: str,
                  options: RunOptions) -> None:
        """Take on one run of `job` (once); `outcome()` then starts it."""
        if self.job is not None:
            raise RuntimeError(f"this coordinator runs job {self.job.name!r} already")
        if job.runtime.faults:
            install_s3_faults(job.runtime.faults)
        self.job, self.plan, self.run_id, self.options = job, plan, run_id, options
        self.resume = options.resume
        self.store = CheckpointStore(checkpoint_root)
        self.faults = Injector(job.runtime.faults, attempt=self.store.attempts(run_id) + 1, coordinator=True,
                               claims=self.store.storage, run_id=run_id)
        self.wiring = Wiring(job, plan, run_id, self.store)
        self.spares.count = spare_count(job.runtime, plan) if job.runtime.spares_after() is not None else 0
        self.state = "starting"
        self.started = time.monotonic()
        self.attempt = 0
        self.restarts = 0
        self.replayed = 0
        self.actors: dict[SubtaskKey, Any] = {}
        self.pids: dict[str, int] = {}
        self.reports: dict[SubtaskKey, SubtaskReport] = {}
        self.checkpointer: Checkpointer | None = None
        self.stats = CheckpointStats()
        self.stopping = options.stop  # a stop that reached the coordinator before this one is not lost
        self.restores: dict[str, int] = {}  # snapshots restored from "object_store" / "durable"
        self.source_seen: dict[SubtaskKey, int] = {}  # records each source subtask emitted, from metrics
        self.refused: set[int] = set()  # checkpoints that failed verification (also kept in storage)
        self.refs: dict[int, dict[SubtaskKey, Any]] = {}  # object-store copies of complete checkpoints
        self._runs: dict[asyncio.Future, SubtaskKey] = {}  # the pending run() call of each subtask
        self._task: asyncio.Future | None = None
        self._attempt_started = 0.0
        self._ended_at = 0.0
        self.origin_id = 0  # the newest checkpoint restored: this run's ids continue after it
        self.recoveries: list[Recovery] = []
        self.waiting = ""  # subtasks waiting for resources, said in one line
        self._failed: tuple[float, Failure, int] | None = None  # (noticed at, failure, replayed before)
        self.table = MetricsTable()  # for handle.metrics()
        self.exporter = JobExporter(job.name)
        self.final_id = 0  # the final checkpoint, once committed: a savepoint when the job was stopped

    def __repr__(self) -> str:  # Ray prefixes this actor's log lines with it
        return f"raystream:{self.job.name}:coordinator" if self.job is not None else "raystream:spare-coordinator"

    # --- calls from subtasks, the driver and users ---------------------------------------

    async def ack(self, attempt: int, checkpoint_id: int, meta: Any, error: str | None) -> None:
        """From a subtask; an attempt that ended has no checkpointer, so its acks count for nothing."""
        if attempt == self.attempt and self.checkpointer is not None:
            key = (meta.chain, meta.subtask)
            if key in self.source_seen or meta.source_records:
                self.source_seen[key] = max(self.source_seen.get(key, 0), meta.source_records)
            await self.checkpointer.on_ack(checkpoint_id, meta, error)

    def source_finished(self, attempt: int, chain: str, subtask: int) -> None:
        if attempt == self.attempt and self.checkpointer is not None:
            self.checkpointer.source_finished((chain, subtask))

    async def stop(self) -> None:
        """End every source after its current batch; the job drains, checkpoints and finishes."""
        self.stopping = True
        self.faults.hit("stopping", (self.checkpointer.stats if self.checkpointer is not None else self.stats).last_id)
        await asyncio.gather(*(a.stop_source.remote() for k, a in self.actors.items() if k in self.wiring.source_keys()),
                             return_exceptions=True)

    async def spare_pids(self) -> list[int]:
        """Process ids of the idle spare subtask actors, once each has started."""
        return list(await asyncio.gather(*(a.pid.remote() for a in self.spares.idle)))

    def metrics(self) -> list[dict[str, Any]]:
        """One row per step and subtask (handle.metrics())."""
        return self.table.rows()

    def status(self) -> JobStatus:
        stats = self.checkpointer.stats if self.checkpointer is not None else self.stats
        return JobStatus(
            job_name=self.job.name, state=self.state, elapsed=time.monotonic() - self.started,
            steps=sum_steps(self.job.step_ids, list(self.reports.values())),
            subtasks=len(self.actors), pids=dict(self.pids), checkpoints=stats,
            restarts=self.restarts, records_replayed=self.replayed, attempt=self.attempt, restores=dict(self.restores),
            coordinator_pid=os.getpid(),
            aligning=sorted(f"{c}[{i}]" for (c, i), r in self.reports.items() if r.aligning is not None),
            recoveries=list(self.recoveries), waiting=self.waiting,
        )

    # --- the job ----------------------------------------------------------------------------

    async def outcome(self) -> JobOutcome:
        """The job's outcome once it ends. The first call starts the job; the driver may
        call again after a lost reply (ActorUnavailableError) and gets the same outcome."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return await asyncio.shield(self._task)

    async def _run(self) -> JobOutcome:
        """Run attempts until one finishes, or a failure ends the job (R1-R5)."""
        tracker = RestartTracker(self.job.restart)
        repeats = Repeats()
        restoring = self.resume
        if self.resume:
            self.restarts = await in_thread(self.store.attempts, self.run_id)  # each earlier attempt ended in a restart
        while True:
            try:
                manifest, progress = await self._begin_attempt(restoring)
            except (RestoreError, CorruptCheckpointError) as exc:  # an origin or progress record that does not verify
                return self._fail(Failure(FailureKind.INCOMPATIBLE, "restore", str(exc)))
            restoring = True
            failure = await self._attempt(manifest, progress)
            if failure is None:
                return JobOutcome(self._result(), None)
            if failure.kind.final:
                return self._fail(failure)
            if repeats.certain(failure, checkpoints_completed=self.stats.completed):  # R2
                return self._fail(repeats.final(failure))
            if failure.kind is FailureKind.RESTORE and manifest is not None:
                # The checkpoint cannot be restored (a snapshot did not verify, or its staged
                # output is gone): refuse it for good and fall back to the one before it.
                await in_thread(self.store.refuse, self.run_id, manifest.checkpoint_id, failure.error)
                self.refused.add(manifest.checkpoint_id)
                self.stats = dataclasses.replace(self.stats, refused=self.stats.refused + 1)
            try:  # R2
                delay = tracker.next_delay(f"{failure.step_id}: {failure.error}")
            except JobFailedError as exc:
                return self._fail(Failure(FailureKind.RESTARTS, self.job.name, str(exc),
                                          traceback_text=failure.traceback_text))
            self.restarts += 1
            self.state = "restarting"
            self._failed = (self._ended_at, failure, self.replayed)
            # INFO: the driver prints one line per recovery, once the job runs again (Recovery.line)
            logger.info("job %s attempt %d failed (%s: %s); restarting in %.1fs", self.job.name,
                        self.attempt, failure.step_id, failure.error.splitlines()[0], delay)
            await asyncio.sleep(delay)

    async def _begin_attempt(self, restoring: bool) -> tuple[Manifest | None, dict[str, dict[str, Any]]]:
        """R3: claim the next attempt (from now on no older attempt can publish
        a checkpoint that counts), choose the checkpoint to restore, and record the choice
        before any subtask touches a sink. At-most-once also reads the sources' progress."""
        self.attempt, manifest = await begin_attempt(
            self.store, self.run_id, self.refused, restoring=restoring,
            max_parallelism=self.job.runtime.max_parallelism, keyed=self.job.keyed, blocking=in_thread)
        self.stats = dataclasses.replace(self.stats, refused=max(self.stats.refused, len(self.refused)))
        if manifest is not None:
            check_matches(manifest, self.job.step_ids, self.options.allow_non_restored_state)
            self.origin_id = max(self.origin_id, manifest.checkpoint_id)
        if manifest is not None and self.stats.completed == 0:  # B2: a new coordinator's counters continue
            self.stats = dataclasses.replace(self.stats, completed=manifest.completed_total,
                                             failed=manifest.failed_total, last_id=manifest.checkpoint_id)
        progress = {}
        if self.job.guarantee == Guarantee.AT_MOST_ONCE and restoring:
            sources = [s.step_id for s in self.job.sources]
            progress = await in_thread(read_progress, self.store, self.run_id, sources, self.attempt)
        return manifest, progress

    def _fail(self, failure: Failure) -> JobOutcome:
        self.state = "failed"
        logger.error("job %s failed: %s: %s", self.job.name, failure.step_id, failure.error)
        # The driver answers status() and metrics() with these once this actor is gone; the
        # attempt's subtasks are dead by now (R1), so none is counted
        final = dataclasses.replace(self.status(), subtasks=0, pids={}, aligning=[], waiting="")
        return JobOutcome(None, failure, final, self.table.rows())

    async def _attempt(self, manifest: Manifest | None, progress: dict[str, dict[str, Any]]) -> Failure | None:
        """One attempt, in phases: start the actors, restore them (R4), start checkpointing,
        run and watch them (R5). Whatever happens, it ends with R1: its checkpoint work is
        closed and its actors are dead before the next attempt begins."""
        self.actors, self.reports, self._runs = {}, {}, {}
        self.table.forget()
        self._attempt_started = time.monotonic()
        failure: Failure | None = Failure(FailureKind.INTERNAL, "attempt", "the attempt was interrupted")
        try:
            failure = await self._start_actors() or await self._restore(manifest, progress)
            if failure is None:
                self._count_replayed(manifest)
                await self._start_checkpointer()
                await self._go_live()
                failure = await self._watch()
            return failure
        finally:
            self._ended_at = time.monotonic()  # a recovery's time counts from here
            await self._end_attempt(wait=failure is not None)

    def _count_replayed(self, manifest: Manifest | None) -> None:
        """What the sources had emitted past the restored offsets is read again (never at
        most once: its sources go on from the offsets they saved, past what they emitted)."""
        restored = {(m.chain, m.subtask): m.source_records for m in manifest.snapshots} if manifest else {}
        if self.job.guarantee != Guarantee.AT_MOST_ONCE:
            self.replayed += sum(max(0, seen - restored.get(k, 0)) for k, seen in self.source_seen.items())
        self.source_seen = {}

    async def _go_live(self) -> None:
        self.state = "running"
        if self._failed is not None:
            failed_at, failure, replayed = self._failed
            self._failed = None
            self.recoveries.append(Recovery(
                self.attempt, failure.step_id, (failure.error.splitlines() or [""])[0][:200],
                time.monotonic() - failed_at, self.replayed - replayed))
        logger.info("job %s attempt %d running after %.2fs of setup", self.job.name, self.attempt,
                    time.monotonic() - self._attempt_started)
        if self.stopping:  # stop() was called while the attempt started: pass it on
            await self.stop()

    async def _start_actors(self) -> Failure | None:
        """R4, first half: an actor for every subtask (`actors.start_subtasks`)."""
        def waiting(text: str) -> None:
            self.waiting = text

        started = await start_subtasks(self.plan, self.job.runtime, self.wiring, self.spares, self.attempt,
                                       lambda key: actor_name(self.job.name, self.run_id,
                                                              f"a{self.attempt}:{key[0]}[{key[1]}]"), waiting)
        if isinstance(started, str):  # an actor could not start (or died at once)
            return Failure(FailureKind.INTERNAL, "subtask start", started)
        self.actors, self.pids = started
        return None

    async def _restore(self, manifest: Manifest | None, progress: dict[str, dict[str, Any]]) -> Failure | None:
        """R4, second half: each subtask restores its state (checksums first), its sinks
        commit the restored transactions and abort the rest, its sources seek."""
        held = self.refs.get(manifest.checkpoint_id, {}) if manifest and manifest.run_id == self.run_id else {}
        specs = {(c.name, i): self.wiring.restore_spec(manifest, c, i, held)
                 for c in self.plan.chains for i in range(c.parallelism)}
        me = ray.get_runtime_context().current_actor
        try:
            tiers = await asyncio.gather(*(
                self.actors[(c.name, i)].setup.remote(specs[(c.name, i)], self.wiring.outputs(c, i, self.actors), me,
                                                      progress.get(c.head.step_id))
                for c in self.plan.chains for i in range(c.parallelism)))
        except ray.exceptions.RayActorError as exc:  # a subtask died while restoring
            return Failure(FailureKind.CRASH, "restore", f"{type(exc).__name__}: {exc}")
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None) or exc
            if isinstance(cause, RestoreError):  # the state does not fit this job (a sink's writer state)
                return Failure(FailureKind.INCOMPATIBLE, "restore", str(cause))
            unrestorable = (CorruptCheckpointError, FileNotFoundError, StagedDataMissingError)
            kind = FailureKind.RESTORE if isinstance(cause, unrestorable) else FailureKind.INTERNAL
            return Failure(kind, "restore", f"{type(cause).__name__}: {cause}")
        for counts in tiers:  # where each restored snapshot was read from
            for tier, n in counts.items():
                self.restores[tier] = self.restores.get(tier, 0) + n
        return None

    async def _start_checkpointer(self) -> None:
        # Ids continue after every manifest of the run, refused and void ones included: never reused.
        ids = await in_thread(self.store.manifest_ids, self.run_id)
        ids.append(self.origin_id)  # a run started from a checkpoint numbers on after it
        self.checkpointer = Checkpointer(
            job_name=self.job.name, guarantee=self.job.guarantee.value, config=self.job.checkpoint,
            store=self.store, run_id=self.run_id, attempt=self.attempt, actors=self.actors,
            sources=self.wiring.source_keys(), chains={c.name: c.parallelism for c in self.plan.chains},
            next_id=max(ids) + 1, stats=self.stats, max_parallelism=self.job.runtime.max_parallelism,
            state_steps=[s.step_id for s in self.job.steps if s.kind.stateful],
            faults=Injector(self.job.runtime.faults, attempt=self.attempt, coordinator=True,
                            claims=self.store.storage, run_id=self.run_id),
            first_after=_FIRST_AFTER_FAILURE if self._failed is not None else None,
        )
        self.checkpointer.refs = self.refs  # object-store copies outlive attempts, for the next restore
        self.checkpointer.start_snapshot_calls()

    async def _end_attempt(self, wait: bool) -> None:
        """R1: close the attempt's checkpoint work (no later ack counts; a
        manifest write in flight lands or fails now), kill its actors, and wait until Ray
        reports each of them dead, so no process of this attempt still writes when the
        next attempt restores."""
        checkpointer, self.checkpointer = self.checkpointer, None
        if checkpointer is not None:
            await checkpointer.close()
            self.stats = checkpointer.stats
            if checkpointer.final_committed:
                self.final_id = self.stats.last_id
        await kill_subtasks(self.actors, {key: f for f, key in self._runs.items()}, wait=wait,
                            what=f"job {self.job.name} attempt {self.attempt}")

    async def _watch(self) -> Failure | None:
        """Wait for every subtask's run(); tick the checkpoints; poll metrics."""
        runs = self._runs = {asyncio.ensure_future(a.run.remote()): key for key, a in self.actors.items()}
        pending = set(runs)
        next_metrics = time.monotonic() + _METRICS_EVERY
        while pending:
            done, pending = await asyncio.wait(pending, timeout=_TICK, return_when=asyncio.FIRST_COMPLETED)
            failures = [f for f in (self._collect(fut, runs[fut]) for fut in done) if f]
            if failures:
                if pending and all(f.kind is FailureKind.PEER for f in failures):
                    # Peers of a crashed subtask fail first at times; give the real cause a moment.
                    more, pending = await asyncio.wait(pending, timeout=2.0)
                    failures += [f for f in (self._collect(fut, runs[fut]) for fut in more) if f]
                return most_specific(failures)
            if self.checkpointer is not None:
                self.checkpointer.tick()
                if self.checkpointer.failure is not None:
                    return Failure(FailureKind.CHECKPOINT, "checkpoint", self.checkpointer.failure)
            if pending and time.monotonic() >= next_metrics:
                next_metrics = time.monotonic() + _METRICS_EVERY
                await self._poll_metrics(pending, runs)
                stats = self.checkpointer.stats if self.checkpointer is not None else self.stats
                self.exporter.export(stats, self.restarts, self.replayed)
                if stats.completed and len(self.spares.idle) != self.spares.count and self._spares_due():
                    self.spares.fill()  # for a recovery, now that there is a checkpoint to recover to
        self.state = "stopped" if self.stopping else "finished"
        return None

    def _spares_due(self) -> bool:
        """Whether the job has run long enough to keep recovery spares (`RuntimeConfig.recovery_spares`)."""
        after = self.job.runtime.spares_after()
        return after is not None and time.monotonic() - self.started >= after

    def _collect(self, fut: asyncio.Future, key: SubtaskKey) -> Failure | None:
        try:
            report: SubtaskReport = fut.result()
        except ray.exceptions.RayError as exc:
            return Failure(FailureKind.CRASH, f"subtask {key[0]}[{key[1]}]", f"{type(exc).__name__}: {exc}")
        self._record(key, report)
        return report.failure

    def _record(self, key: SubtaskKey, report: SubtaskReport) -> None:
        self.reports[key] = report
        self.table.update(report)
        head = self.plan.chains[self.plan.chain_of_step[report.chain_name.split("+")[0]]].head
        if head.kind is StepKind.SOURCE:
            self.source_seen[key] = max(self.source_seen.get(key, 0), report.steps.get(head.step_id, (0, 0))[1])

    async def _poll_metrics(self, pending: set, runs: dict) -> None:
        keys = [runs[f] for f in pending]
        if not keys:  # asyncio.wait refuses an empty set: every subtask has just finished
            return
        futs = [asyncio.ensure_future(self.actors[k].metrics.remote()) for k in keys]
        done, _ = await asyncio.wait(futs, timeout=1.0)
        for key, fut in zip(keys, futs):
            if fut in done and fut.exception() is None:
                self._record(key, fut.result())

    def _result(self) -> JobResult:
        reports = list(self.reports.values())
        return JobResult(
            job_name=self.job.name, state=self.state, duration=time.monotonic() - self.started,
            steps=sum_steps(self.job.step_ids, reports), outputs=sink_outputs(reports),
            max_in_flight_seen=max((r.max_in_flight_seen for r in reports), default=0),
            max_queued_seen=max((r.max_queued_seen for r in reports), default=0),
            checkpoints=self.stats, restarts=self.restarts, records_replayed=self.replayed, run_id=self.run_id,
            checkpoint_root=self.store.root, restores=dict(self.restores),
            savepoint=CheckpointRef(self.store.root, self.run_id, self.final_id).uri
            if self.stopping and self.final_id else "",
            metrics=self.table.rows(), recoveries=list(self.recoveries),
        )
