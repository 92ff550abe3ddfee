"""Driver side: connect to (or start) Ray, plan the job, and supervise its coordinator.

The supervisor keeps the coordinator alive: if its process dies, a new coordinator
resumes the same run from durable storage (the subtasks died with the old one, since
Ray ends actors with their owner). Restarts of the coordinator follow the job's
restart strategy. Only ActorDiedError means death: a reply that was lost
(ActorUnavailableError: the call may or may not have run) is asked for again, because
a second coordinator beside a live first one would be two writers of one run. A stop
(with or without a savepoint, and so a rescale) is remembered here and handed to every
coordinator started after it, so a coordinator that dies while stopping loses nothing.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import threading
import time
from typing import Any, Callable

import ray

from raystream import _files
from raystream._runtime.control.actors import spare_count
from raystream._runtime.state import signing
from raystream._runtime.state.store import CheckpointStore, new_run_id
from raystream._runtime.checkpointing.origin import hold, locate_origin, release
from raystream._runtime.control.connect import ensure_ray
from raystream._runtime.control.coordinator import JobCoordinator, actor_name
from raystream._runtime.plan.physical import PhysicalPlan, build_plan
from raystream._runtime.checkpointing.recovery import RestartTracker, check_restorable
from raystream._runtime.checkpointing.rescale import check_matches
from raystream._runtime.control.reports import JobOutcome
from raystream._runtime.plan.specs import RunOptions
from raystream.config import Guarantee
from raystream.errors import JobFailedError, RaystreamError, SourceError
from raystream.graph import JobGraph, StepKind
from raystream.result import JobResult, JobStatus, Recovery

logger = logging.getLogger(__name__)

_UNAVAILABLE_LIMIT = 120.0  # seconds a coordinator may stay unreachable before the job fails
_POLL = 1.0  # seconds between the supervisor's looks at the coordinator (for recoveries)


def checkpoint_root(job: JobGraph) -> str:
    """`<storage>/<job name>`. Storage defaults to RAYSTREAM_CHECKPOINT_STORAGE (a cluster
    sets it on its head, cluster.yaml), else ./raystream-checkpoints (made absolute here)."""
    base = (job.checkpoint.storage or os.environ.get("RAYSTREAM_CHECKPOINT_STORAGE")
            or os.path.join(os.getcwd(), "raystream-checkpoints"))
    return _files.Location.parse(base).join(job.name).uri()


def resumable_run(job: JobGraph, store: CheckpointStore) -> str:
    """The run that `--resume` continues: the newest one with a complete checkpoint
    (at-most-once: the newest run, whose sources saved their progress)."""
    if job.guarantee == Guarantee.AT_MOST_ONCE:
        run_id = store.newest_run()
        if run_id is not None:
            return run_id
    else:
        run_id = store.newest_run_with_checkpoint()
        if run_id is not None:
            return run_id
    raise JobFailedError(
        f"nothing to resume: no complete checkpoint of job {job.name!r} under {store.root}; run without resume")


class Supervisor:
    """Starts the coordinator and, from a background thread, restarts it if its process
    dies; `wait()` returns the job's result or raises its error."""

    def __init__(self, job: JobGraph, plan: PhysicalPlan, run_id: str, root: str, options: RunOptions):
        self.job, self.plan, self.run_id, self.root, self.options = job, plan, run_id, root, options
        self.tracker = RestartTracker(job.restart)
        self.generation = 0
        self._lock = threading.Lock()  # the stop request and the coordinator it went to
        self._stop_requested = False
        self._reported = 0  # recoveries logged so far
        self._waiting = ""  # the wait for resources logged last
        self.coordinator: Any = None
        self.outcome: JobOutcome | None = None
        self.error: BaseException | None = None
        self._last_status: JobStatus | None = None  # the coordinator's newest, for an end without its figures
        self._started = time.monotonic()
        self._ended = 0.0
        self._done = threading.Event()
        self._node_id = ray.get_runtime_context().get_node_id()  # the Ray session this driver uses
        self._first_ref = self._launch(options.resume)
        self._thread = threading.Thread(target=self._supervise, name=f"raystream-{job.name}", daemon=True)
        self._thread.start()

    def _launch(self, resume: bool) -> Any:
        with self._lock:  # a stop asked for from now on goes to the new coordinator, or with its options
            self.generation += 1
            options = dataclasses.replace(self.options, resume=resume, stop=self._stop_requested)
            args = (self.job, self.plan, self.run_id, self.root, options)
            self.coordinator = _spare.take(*args) or JobCoordinator.options(
                name=actor_name(self.job.name, self.run_id, f"coordinator{self.generation}"), max_restarts=0,
            ).remote(*args)
            return self.coordinator.outcome.remote()

    def _supervise(self) -> None:
        run_ref = self._first_ref
        unavailable_since: float | None = None
        try:
            while True:
                try:
                    self._check_ray()
                    if not ray.wait([run_ref], timeout=_POLL)[0]:
                        self._report_recoveries()
                        continue
                    self.outcome = ray.get(run_ref)
                    if self.outcome.result is not None:
                        self._report_recoveries(self.outcome.result.recoveries)
                    return
                except ray.exceptions.RayTaskError as exc:  # raised inside the coordinator: a bug, not a crash
                    raise JobFailedError(f"the coordinator of job {self.job.name!r} failed: {exc}") from exc
                except ray.exceptions.ActorUnavailableError as exc:  # maybe alive: ask again
                    unavailable_since = unavailable_since or time.monotonic()
                    if time.monotonic() - unavailable_since > _UNAVAILABLE_LIMIT:
                        raise JobFailedError(f"the coordinator of job {self.job.name!r} has been unreachable for "
                                             f"{_UNAVAILABLE_LIMIT:.0f}s: {exc}") from exc
                    time.sleep(0.5)
                    run_ref = self.coordinator.outcome.remote()
                except ray.exceptions.RayActorError as exc:  # ActorDiedError: the process is gone
                    ray.kill(self.coordinator, no_restart=True)  # never two coordinators of one run
                    delay = self.tracker.next_delay(f"the coordinator died: {exc}")
                    logger.warning("job %s: the coordinator died; a new one resumes in %.1fs", self.job.name, delay)
                    time.sleep(delay)
                    unavailable_since = None
                    run_ref = self._launch(resume=True)
                    self._reported = 0  # the new coordinator counts its own recoveries
        except BaseException as exc:  # handed to wait()
            self.error = exc
        finally:
            self._ended = time.monotonic()
            self._done.set()

    def _check_ray(self) -> None:
        """End supervision when the Ray this job runs on was shut down (or replaced by
        another ray.init in this process): its references mean nothing there."""
        if not ray.is_initialized() or ray.get_runtime_context().get_node_id() != self._node_id:
            raise JobFailedError(f"Ray was shut down while job {self.job.name!r} was running")

    def _report_recoveries(self, recoveries: list[Recovery] | None = None) -> None:
        """One line per recovery, and one when subtasks wait for resources, in the driver's
        log (the terminal, the notebook)."""
        if recoveries is None:
            try:
                status = ray.get(self.coordinator.status.remote(), timeout=_POLL)
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                return  # the coordinator is busy or gone: the next poll, or its outcome, tells
            self._last_status = status
            recoveries = status.recoveries
            if status.waiting and status.waiting != self._waiting:
                logger.warning("job %s: %s", self.job.name, status.waiting)
            self._waiting = status.waiting
        for recovery in recoveries[self._reported:]:
            logger.warning("%s", recovery.line(self.job.name))
        self._reported = max(self._reported, len(recoveries))

    def metrics(self) -> list[dict[str, Any]]:
        if self._done.is_set():  # the coordinator is gone, or going: the rows of the job's end
            if self.outcome is None:
                return []  # supervision failed: the coordinator went with its rows
            return self.outcome.result.metrics if self.outcome.result is not None else self.outcome.metrics
        try:
            return ray.get(self.coordinator.metrics.remote(), timeout=10)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return []  # restarting: no subtask to report

    def status(self) -> JobStatus:
        if self._done.is_set():  # wait() kills the coordinator: asking it would say "restarting" for good
            return self.final_status()
        elapsed = time.monotonic() - self._started
        try:
            status = ray.get(self.coordinator.status.remote(), timeout=10)
        except ray.exceptions.GetTimeoutError:  # alive but busy: its last word stands
            last = self._last_status or JobStatus(self.job.name, "starting", 0.0)
            return dataclasses.replace(last, elapsed=elapsed)
        except ray.exceptions.RayActorError:  # dead: the supervisor starts the next one
            return JobStatus(self.job.name, "restarting", elapsed)
        self._last_status = status
        return status

    def final_status(self) -> JobStatus:
        """The ended job's state and final figures: its result's, its failure's, or, when
        supervision itself failed (the coordinator died past the restart strategy, Ray was
        shut down), the newest the coordinator reported, as failed."""
        outcome = self.outcome
        if outcome is not None and outcome.result is not None:
            return outcome.result.final_status()
        if outcome is not None and outcome.status is not None:
            return outcome.status
        last = self._last_status or JobStatus(self.job.name, "failed", 0.0)
        return dataclasses.replace(last, state="failed", elapsed=self._ended - self._started, subtasks=0, pids={},
                                   aligning=[], waiting="")

    def start_from(self, job: JobGraph, savepoint: str) -> "Supervisor":
        """A new run of `job` (changed settings or graph) from `savepoint`."""
        return start_job(job, from_checkpoint=savepoint)

    def stop(self) -> None:
        """End the sources. When the coordinator dies before it passed the stop on, the
        next one is started stopping (`_launch`)."""
        with self._lock:
            self._stop_requested = True
            coordinator = self.coordinator
        try:
            ray.get(coordinator.stop.remote(), timeout=10)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass  # dead (its successor is told at its start) or busy (the call is queued)

    def wait(self, progress: Callable[[JobStatus], None] | None, interval: float) -> JobResult:
        """Block until the job ends; returns its result or raises its error."""
        try:
            while not self._done.wait(interval):
                if progress is not None:
                    try:
                        progress(self.status())
                    except Exception:  # a progress display must never fail the job
                        logger.debug("progress callback failed", exc_info=True)
        finally:
            if self._done.is_set():
                ray.kill(self.coordinator, no_restart=True)
                _spare.prepare(spare_count(self.job.runtime, self.plan), self.job.runtime.spare_actors > 0)
        if self.error is not None:
            raise self.error
        if self.outcome.failure is not None:
            raise self.outcome.failure.to_error()
        return self.outcome.result


class CoordinatorSpare:
    """The blank coordinator this driver keeps for its next job (`_runtime/control/actors.py`),
    prepared when a job ends, with as many blank subtask actors as that job had
    subtasks: a notebook's second run starts on processes that are up already."""

    _WAIT = 30.0  # seconds a spare may take to answer before a new coordinator is started instead

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handle: Any = None
        self._node_id = ""  # the Ray session the spare belongs to

    def prepare(self, subtasks: int, wanted: bool) -> None:
        with self._lock:
            if self._handle is not None or not wanted or not ray.is_initialized():
                return
            self._node_id = ray.get_runtime_context().get_node_id()
            self._handle = JobCoordinator.options(max_restarts=0).remote(spares=subtasks)

    def take(self, *configure_args: Any) -> Any:
        """The spare, configured with `configure_args`; None if there is none that answers."""
        with self._lock:
            handle, self._handle = self._handle, None
            if handle is None or ray.get_runtime_context().get_node_id() != self._node_id:
                return None  # none, or one of a Ray session that has ended
        try:
            ray.get(handle.configure.remote(*configure_args), timeout=self._WAIT)
            return handle
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as exc:
            logger.info("the spare coordinator did not answer (%s); starting a new one", type(exc).__name__)
            ray.kill(handle, no_restart=True)
            return None


_spare = CoordinatorSpare()


def _check_sink(sink: Any, job: JobGraph, step_id: str, parallelism: int) -> None:
    """Sink.check, with `job` for sinks whose check takes it (one written before it existed does not)."""
    kwargs: dict[str, Any] = {"job_name": job.name, "step_id": step_id, "parallelism": parallelism,
                              "exactly_once": job.guarantee is Guarantee.EXACTLY_ONCE}
    params = inspect.signature(sink.check).parameters
    if "job" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs["job"] = job
    sink.check(**kwargs)


def start_job(job: JobGraph, *, resume: bool = False, from_checkpoint: str | None = None,
              allow_non_restored_state: bool = False) -> Supervisor:
    """Plan `job`, list its source partitions (errors stop it here), and start it:
    a new run, the newest run again (`resume`), or a new run from a savepoint or any
    retained checkpoint (`from_checkpoint`, checked here before anything starts)."""
    if resume and from_checkpoint:
        raise JobFailedError("resume and from_checkpoint exclude each other: resume continues this job's newest "
                             "run, from_checkpoint starts a new run from the checkpoint it names")
    source_partitions: dict[str, list[str]] = {}
    for step in job.sources:
        try:
            source_partitions[step.step_id] = list(step.source.list_partitions())
        except RaystreamError:
            raise
        except Exception as exc:
            raise SourceError(f"source {step.step_id!r} could not list its partitions: {exc}") from exc
    plan = build_plan(job, source_partitions)
    for step in job.steps:  # a sink that cannot work says why before anything starts
        if step.kind is StepKind.SINK:
            _check_sink(step.sink, job, step.step_id, job.parallelism_of(step))
    if job.errors.mode == "dead_letter":  # a writer per subtask of every chain
        _check_sink(job.errors.sink, job, "dead letters", sum(c.parallelism for c in plan.chains))
    root = checkpoint_root(job)
    signing.current(create=True)  # the process that starts a job makes the key if there is none
    store = CheckpointStore(root)
    run_id = resumable_run(job, store) if resume else new_run_id()
    if from_checkpoint:
        origin = locate_origin(from_checkpoint)
        origin_store = store if origin.root == root else CheckpointStore(origin.root)
        manifest = origin_store.load_manifest(origin.run_id, origin.checkpoint_id)
        check_restorable(manifest, max_parallelism=job.runtime.max_parallelism, keyed=job.keyed)
        check_matches(manifest, job.step_ids, allow_non_restored_state)
        hold(origin_store, origin, run_id)
        try:
            store.record_origin(run_id, origin)
            logger.info("job %s: run %s starts from %s", job.name, run_id, origin.uri)
            return _supervise(job, plan, run_id, root, RunOptions(resume=True,
                                                                   allow_non_restored_state=allow_non_restored_state))
        except BaseException:  # the run never began: its hold must not stop the other run's fall-backs
            release(origin_store, origin, run_id)
            raise
    return _supervise(job, plan, run_id, root, RunOptions(resume=resume, allow_non_restored_state=allow_non_restored_state))


def _supervise(job: JobGraph, plan: Any, run_id: str, root: str, options: RunOptions) -> "Supervisor":
    ensure_ray()
    return Supervisor(job, plan, run_id, root, options)
