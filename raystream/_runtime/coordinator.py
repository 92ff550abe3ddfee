"""The job coordinator: a Ray actor that runs the job's attempts, checkpoints them and
recovers from failures.

Recovery protocol (DESIGN.md):
  1. A failure shows up as an ActorDiedError on the pending `run()` call the coordinator
     keeps per subtask, as a failure report from a subtask, or as checkpoints failing
     past `tolerable_failures` (a hung subtask never acknowledges).
  2. The attempt's actors are killed. The restart strategy gives the delay before the
     next attempt, or ends the job when restarts are exhausted. A user function or a
     source that fails on its input ends the job at once: a restart would fail the same.
  3. The next attempt claims a new attempt number in durable storage and creates new
     actors, each restored from the newest complete manifest: from the object-store
     copy this coordinator still holds, else from durable storage, checksum first.
  4. Sources seek to the manifest's offsets (at-most-once: to the offsets they saved
     before each batch, so nothing is replayed); sinks commit the restored checkpoint's
     transactions and abort the rest; processing resumes.
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
from dataclasses import dataclass
from typing import Any

import ray

from raystream._runtime.checkpoint import CheckpointStore, CorruptCheckpointError, Manifest, incompatibility
from raystream._runtime.checkpointing import Checkpointer, Key
from raystream._runtime.plan import Chain, PhysicalPlan
from raystream._runtime.recovery import RestartTracker, RestoreError, snapshots_for
from raystream._runtime.spec import OutputSpec, RestoreSpec, SubtaskReport, SubtaskSpec
from raystream._runtime.subtask import SubtaskActor
from raystream.config import Guarantee
from raystream.errors import JobFailedError
from raystream.faults import Injector, install_s3_faults
from raystream.job import Job
from raystream.result import CheckpointStats, Failure, JobResult, JobStatus, StepMetrics

logger = logging.getLogger(__name__)

#: Which failure explains an attempt's end best when several arrive together (lower first).
_SPECIFICITY = {"record": -6, "source": -5, "restore": -4, "internal": -3, "checkpoint": -2, "crash": -1, "peer": 0}
#: Failures that a restart would only repeat.
_FINAL = ("record", "source")
_TICK = 0.05
_METRICS_EVERY = 0.5


def actor_name(job_name: str, run_id: str, what: str) -> str:
    """Names make a run's actors findable (ray list actors, tests) and never collide."""
    return f"raystream:{job_name}:{run_id}:{what}"


@dataclass
class JobOutcome:
    result: JobResult | None
    failure: Failure | None


def sum_steps(order: list[str], reports: list[SubtaskReport]) -> dict[str, StepMetrics]:
    """Counters summed over subtasks, in the job's step order."""
    totals: dict[str, list[int]] = {step_id: [0, 0, 0] for step_id in order}
    for r in reports:
        for step_id, (n_in, n_out) in r.steps.items():
            t = totals.setdefault(step_id, [0, 0, 0])
            t[0] += n_in
            t[1] += n_out
        for step_id, n in r.errors.items():
            totals.setdefault(step_id, [0, 0, 0])[2] += n
    return {k: StepMetrics(*v) for k, v in totals.items()}


@ray.remote(num_cpus=0)
class JobCoordinator:
    def __init__(self, job: Job, plan: PhysicalPlan, run_id: str, checkpoint_root: str, resume: bool):
        if job.runtime.faults:
            install_s3_faults(job.runtime.faults)
        self.job, self.plan, self.run_id, self.resume = job, plan, run_id, resume
        self.store = CheckpointStore(checkpoint_root)
        self.checkpointing = job.guarantee != Guarantee.AT_MOST_ONCE
        self.state = "starting"
        self.started = time.monotonic()
        self.attempt = 0
        self.restarts = 0
        self.replayed = 0
        self.actors: dict[Key, Any] = {}
        self.pids: dict[str, int] = {}
        self.reports: dict[Key, SubtaskReport] = {}
        self.checkpointer: Checkpointer | None = None
        self.stats = CheckpointStats()
        self.stopping = False
        self.restores: dict[str, int] = {}  # snapshots restored from "object_store" / "durable"
        self.source_seen: dict[Key, int] = {}  # records each source subtask emitted, from metrics
        self.bad_manifests: set[int] = set()  # checkpoints whose snapshots failed verification

    # --- calls from subtasks, the driver and users ---------------------------------------

    async def ack(self, attempt: int, checkpoint_id: int, meta: Any, error: str | None) -> None:
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
        await asyncio.gather(*(a.stop_source.remote() for k, a in self.actors.items() if k in self._source_keys()),
                             return_exceptions=True)

    def status(self) -> JobStatus:
        stats = self.checkpointer.stats if self.checkpointer is not None else self.stats
        return JobStatus(
            job_name=self.job.name, state=self.state, elapsed=time.monotonic() - self.started,
            steps=sum_steps(list(self.job.steps), list(self.reports.values())),
            subtasks=len(self.actors), pids=dict(self.pids), checkpoints=stats,
            restarts=self.restarts, records_replayed=self.replayed, attempt=self.attempt, restores=dict(self.restores),
            coordinator_pid=os.getpid(),
            aligning=sorted(f"{c}[{i}]" for (c, i), r in self.reports.items() if r.aligning is not None),
        )

    # --- the job ----------------------------------------------------------------------------

    async def run(self) -> JobOutcome:
        """Run attempts until one finishes, or a failure ends the job (recovery steps 1-4)."""
        loop = asyncio.get_running_loop()
        tracker = RestartTracker(self.job.restart)
        manifest = None
        if self.resume:
            try:
                manifest = await loop.run_in_executor(None, self._newest_manifest)
            except RestoreError as exc:
                return self._fail(Failure("restore", "restore", "", str(exc), ""))
            attempts = await loop.run_in_executor(None, self.store.attempts, self.run_id)
            self.restarts = attempts  # every earlier attempt of this run ended in a restart
            if manifest is not None:  # the counters continue; refusals just made are kept
                self.stats = dataclasses.replace(self.stats, completed=manifest.completed_total,
                                                 failed=manifest.failed_total, last_id=manifest.checkpoint_id)
        while True:
            self.attempt = await loop.run_in_executor(None, self.store.claim_attempt, self.run_id)
            completed_before = self.stats.completed
            failure = await self._attempt(manifest)
            if failure is None:
                return JobOutcome(self._result(), None)
            if failure.kind in _FINAL:
                return self._fail(failure)
            if failure.kind == "restore" and manifest is not None:
                # A snapshot of this checkpoint did not verify: fall back to the one before it.
                self.bad_manifests.add(manifest.checkpoint_id)
                self.stats = dataclasses.replace(self.stats, refused=self.stats.refused + 1)
            try:  # step 2
                delay = tracker.next_delay(f"{failure.step_id}: {failure.error}",
                                           made_progress=self.stats.completed > completed_before)
            except JobFailedError as exc:
                return self._fail(Failure("restarts", self.job.name, "", str(exc), failure.traceback_text))
            self.restarts += 1
            self.state = "restarting"
            logger.warning("job %s attempt %d failed (%s: %s); restarting in %.1fs", self.job.name,
                           self.attempt, failure.step_id, failure.error.splitlines()[0], delay)
            await asyncio.sleep(delay)
            if self.checkpointing:
                try:
                    manifest = await loop.run_in_executor(None, self._newest_manifest)
                except RestoreError as exc:
                    return self._fail(Failure("restore", "restore", "", str(exc), ""))
                if manifest is None and self.bad_manifests:
                    return self._fail(Failure("restore", "restore", "", (
                        f"no checkpoint of run {self.run_id} verifies (refused: "
                        f"{sorted(self.bad_manifests)}); starting over would repeat committed output"), ""))

    def _newest_manifest(self) -> Manifest | None:
        """The newest committed checkpoint of this run that verifies (its signature, when a
        key is set) and was not refused before; refusals are counted."""
        for checkpoint_id in reversed(self.store.manifest_ids(self.run_id)):
            if checkpoint_id in self.bad_manifests:
                continue
            try:
                manifest = self.store.load_manifest(self.run_id, checkpoint_id)
            except CorruptCheckpointError as exc:
                logger.error("checkpoint %d refused: %s", checkpoint_id, exc)
                self.bad_manifests.add(checkpoint_id)
                self.stats = dataclasses.replace(self.stats, refused=self.stats.refused + 1)
                continue
            problem = incompatibility(manifest.versions)
            if problem is not None:
                raise RestoreError(f"checkpoint {checkpoint_id} of run {self.run_id} cannot be restored: {problem}")
            return manifest
        return None

    def _fail(self, failure: Failure) -> JobOutcome:
        self.state = "failed"
        logger.error("job %s failed: %s: %s", self.job.name, failure.step_id, failure.error)
        return JobOutcome(None, failure)

    def _source_keys(self) -> list[Key]:
        return [(c.name, i) for c in self.plan.chains if c.head.kind == "source" for i in range(c.parallelism)]

    def _spec(self, chain: Chain, subtask: int) -> SubtaskSpec:
        head = chain.head
        return SubtaskSpec(
            job_name=self.job.name, chain_name=chain.name, steps=chain.steps, subtask=subtask,
            parallelism=chain.parallelism, n_inputs=len(self.plan.input_channels(chain, subtask)),
            runtime=self.job.runtime, guarantee=self.job.guarantee, checkpoint_root=self.store.root,
            run_id=self.run_id, attempt=self.attempt, errors=self.job.errors, audit=self.job.audit,
            source_partitions=self.plan.partitions_of(head.step_id, subtask) if head.kind == "source" else [],
        )

    def _outputs(self, chain: Chain, subtask: int) -> list[OutputSpec]:
        outputs = []
        for edge in chain.out_edges:
            down = self.plan.chains[self.plan.chain_of_step[edge.downstream]]
            targets = [subtask] if edge.kind == "forward" else range(down.parallelism)
            outputs.append(OutputSpec(edge.kind, [
                (self.actors[(down.name, j)], self.plan.channel_index(down, j, edge, subtask)) for j in targets
            ]))
        return outputs

    def _restore_spec(self, manifest: Manifest | None, chain: Chain, subtask: int) -> RestoreSpec | None:
        if manifest is None:
            return None
        held = self.checkpointer.refs.get(manifest.checkpoint_id, {}) if self.checkpointer else {}
        metas = snapshots_for(manifest, chain, subtask)
        return RestoreSpec(manifest.checkpoint_id, [(m, held.get((m.chain, m.subtask))) for m in metas])

    async def _attempt(self, manifest: Manifest | None) -> Failure | None:
        """One attempt: create, restore and connect the actors, run them, checkpoint them."""
        rt = self.job.runtime
        previous = self.checkpointer
        restored = {(m.chain, m.subtask): m.source_records for m in manifest.snapshots} if manifest else {}
        self.actors, self.reports = {}, {}
        setup_started = time.monotonic()
        try:
            for chain in self.plan.chains:  # step 3: new actors
                for i in range(chain.parallelism):
                    self.actors[(chain.name, i)] = SubtaskActor.options(
                        name=actor_name(self.job.name, self.run_id, f"a{self.attempt}:{chain.name}[{i}]"),
                        num_cpus=rt.subtask_num_cpus, resources=rt.subtask_resources or None,
                        max_restarts=0, max_task_retries=0,
                    ).remote(self._spec(chain, i))
            try:
                pids = await asyncio.gather(*(a.pid.remote() for a in self.actors.values()))
            except ray.exceptions.RayError as exc:  # an actor could not start (or died at once)
                return Failure("internal", "subtask start", "", f"{type(exc).__name__}: {exc}", "")
            self.pids = {f"{c}[{i}]": pid for (c, i), pid in zip(self.actors, pids)}
            try:
                specs = {(c.name, i): self._restore_spec(manifest, c, i)
                         for c in self.plan.chains for i in range(c.parallelism)}
            except RestoreError as exc:
                return Failure("source", "restore", "", str(exc), "")
            me = ray.get_runtime_context().current_actor
            try:  # steps 3-4: restore, commit restored transactions, connect
                tiers = await asyncio.gather(*(
                    self.actors[(c.name, i)].setup.remote(specs[(c.name, i)], self._outputs(c, i), me)
                    for c in self.plan.chains for i in range(c.parallelism)))
            except ray.exceptions.RayActorError as exc:  # a subtask died while restoring
                return Failure("crash", "restore", "", f"{type(exc).__name__}: {exc}", "")
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None) or exc
                kind = "restore" if isinstance(cause, (CorruptCheckpointError, FileNotFoundError)) else "internal"
                return Failure(kind, "restore", "", f"{type(cause).__name__}: {cause}", "")
            for counts in tiers:  # where each restored snapshot was read from
                for tier, n in counts.items():
                    self.restores[tier] = self.restores.get(tier, 0) + n
            # What the sources had emitted past the restored offsets is read again.
            self.replayed += sum(max(0, seen - restored.get(k, 0)) for k, seen in self.source_seen.items())
            self.source_seen = {}
            # Ids continue after every manifest of the run, refused ones included: never reused.
            ids = await asyncio.get_running_loop().run_in_executor(None, self.store.manifest_ids, self.run_id)
            next_id = max(ids, default=0) + 1
            self.checkpointer = Checkpointer(
                job_name=self.job.name, guarantee=self.job.guarantee.value, config=self.job.checkpoint,
                store=self.store, run_id=self.run_id, attempt=self.attempt, actors=self.actors,
                sources=self._source_keys(), chains={c.name: c.parallelism for c in self.plan.chains},
                next_id=next_id, stats=self.stats,
                faults=Injector(self.job.runtime.faults, attempt=self.attempt, coordinator=True),
            ) if self.checkpointing else None
            if self.checkpointer is not None:
                if previous is not None:  # keep the object-store copies for another restore
                    self.checkpointer.refs = previous.refs
                self.checkpointer.start_snapshot_calls()
            self.state = "running"
            logger.info("job %s attempt %d running after %.2fs of setup", self.job.name, self.attempt,
                        time.monotonic() - setup_started)
            if self.stopping:
                await self.stop()
            return await self._watch()
        finally:
            if self.checkpointer is not None:
                self.stats = self.checkpointer.stats
            for actor in self.actors.values():
                ray.kill(actor, no_restart=True)

    async def _watch(self) -> Failure | None:
        """Wait for every subtask's run(); tick the checkpoints; poll metrics."""
        runs = {asyncio.ensure_future(a.run.remote()): key for key, a in self.actors.items()}
        pending = set(runs)
        next_metrics = time.monotonic() + _METRICS_EVERY
        while pending:
            done, pending = await asyncio.wait(pending, timeout=_TICK, return_when=asyncio.FIRST_COMPLETED)
            failures = [f for f in (self._collect(fut, runs[fut]) for fut in done) if f]
            if failures:
                if pending and all(f.kind == "peer" for f in failures):
                    # Peers of a crashed subtask fail first at times; give the real cause a moment.
                    more, pending = await asyncio.wait(pending, timeout=2.0)
                    failures += [f for f in (self._collect(fut, runs[fut]) for fut in more) if f]
                for fut in pending:  # the actors are about to be killed
                    fut.cancel()
                return min(failures, key=lambda f: _SPECIFICITY.get(f.kind, 0))
            if self.checkpointer is not None:
                self.checkpointer.tick()
                if self.checkpointer.failure is not None:
                    return Failure("checkpoint", "checkpoint", "", self.checkpointer.failure, "")
            if time.monotonic() >= next_metrics:
                next_metrics = time.monotonic() + _METRICS_EVERY
                await self._poll_metrics(pending, runs)
        self.state = "stopped" if self.stopping else "finished"
        return None

    def _collect(self, fut: asyncio.Future, key: Key) -> Failure | None:
        try:
            report: SubtaskReport = fut.result()
        except ray.exceptions.RayError as exc:
            return Failure("crash", f"subtask {key[0]}[{key[1]}]", "", f"{type(exc).__name__}: {exc}", "")
        self._record(key, report)
        return report.failure

    def _record(self, key: Key, report: SubtaskReport) -> None:
        self.reports[key] = report
        head = self.plan.chains[self.plan.chain_of_step[report.chain_name.split("+")[0]]].head
        if head.kind == "source":
            self.source_seen[key] = max(self.source_seen.get(key, 0), report.steps.get(head.step_id, (0, 0))[1])

    async def _poll_metrics(self, pending: set, runs: dict) -> None:
        keys = [runs[f] for f in pending]
        futs = [asyncio.ensure_future(self.actors[k].metrics.remote()) for k in keys]
        done, _ = await asyncio.wait(futs, timeout=1.0)
        for key, fut in zip(keys, futs):
            if fut in done and fut.exception() is None:
                self._record(key, fut.result())

    def _result(self) -> JobResult:
        reports = list(self.reports.values())
        outputs: dict[str, Any] = {}
        for report in sorted(reports, key=lambda r: (r.chain_name, r.subtask)):
            for step_id, value in report.sink_results.items():
                outputs.setdefault(step_id, []).append(value)
        for step_id, values in outputs.items():
            if all(isinstance(v, list) for v in values):
                outputs[step_id] = [r for v in values for r in v]
        return JobResult(
            job_name=self.job.name, state=self.state, duration=time.monotonic() - self.started,
            steps=sum_steps(list(self.job.steps), reports), outputs=outputs,
            max_in_flight_seen=max((r.max_in_flight_seen for r in reports), default=0),
            max_queued_seen=max((r.max_queued_seen for r in reports), default=0),
            checkpoints=self.stats, restarts=self.restarts, records_replayed=self.replayed, run_id=self.run_id,
            checkpoint_root=self.store.root, restores=dict(self.restores),
        )
