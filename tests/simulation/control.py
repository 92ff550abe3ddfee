"""The control plane of the simulation: a run's driver and its coordinators.

`SimRun` is one run of the job, as the driver's Supervisor keeps it: it starts a
coordinator, starts a new one (resuming the run) when the old one dies, and remembers a
stop it was asked for, handing it to every coordinator it starts later (RunOptions.stop).
`SimCoordinator` runs attempts as JobCoordinator does, with the real code for each step:
`recovery.begin_attempt` (claim, choose, record), the merge of old snapshots by step id
(`rescale.merge_states`), the sinks' recover, the `Checkpointer` (trigger, acks, manifest,
notify, retention, close) and refusals.
"""
from __future__ import annotations

import asyncio
from typing import Any

from raystream._runtime.checkpointing import recovery
from raystream._runtime.state.store import CheckpointStore
from raystream._runtime.checkpointing.coordinator_side import Checkpointer
from raystream.testing.injector import Injector
from raystream._runtime.checkpointing.rescale import merge_states
from raystream._runtime.state.changelog import materialize
from raystream._runtime.plan.specs import RunOptions
from raystream.config import CheckpointConfig
from raystream.errors import CorruptCheckpointError, RestoreError, StaleAttemptError, StagedDataMissingError
from raystream.result import CheckpointStats

from .job import JOB, Outputs, SimSubtask
from .trace import Trace
from .keyed_state import logical_state
from .retention import breaks_kept
from .source import SimSource
from .world import Proc, Remote, SimFailure, SimStorage, World, blocking_for


class _SubtaskDied(Exception):
    pass


class SimRun:
    """One run: its id, settings, source (partitions present now) and outputs."""

    def __init__(self, scenario: Any, run_id: str, *, parallelism: int, source: SimSource, outputs: Outputs,
                 options: RunOptions, config: CheckpointConfig, label: str):
        self.scenario, self.run_id, self.parallelism = scenario, run_id, parallelism
        self.world: World = scenario.world
        self.store: CheckpointStore = scenario.store
        self.trace: Trace = scenario.trace
        self.source, self.outputs, self.options, self.config, self.label = source, outputs, options, config, label
        self.coordinator: SimCoordinator | None = None
        self.stop_requested = False
        self.outcome = ""  # "finished", "stopped", "failed: ..." once it ends
        self.abandoned = False  # the whole program went away: no coordinator is started again
        self._task: asyncio.Future | None = None
        # a run into a changed job (changed.py): (the changed step's id, how), and the steps
        # its restores gave keyed state; it ends once a restore is through
        self.changed: tuple[str, str] | None = None
        self.restored_steps: set[str] = set()

    def log(self, text: str) -> None:
        self.world.log.append(f"{self.world.now:.3f} [{self.label}] {text}")

    def note_sink_error(self, subtask: SimSubtask, exc: Exception) -> None:
        """A sink failed in a live process: never expected (a dead one's connections are closed)."""
        what = f"{subtask.proc.name}: {type(exc).__name__}: {exc}"
        if isinstance(exc, StagedDataMissingError):
            self.trace.missing_staged.append(what)
        elif subtask.proc.alive and not isinstance(exc, StaleAttemptError):  # a fenced-off commit is the fence working
            self.trace.sink_errors.append(what)

    def start(self) -> None:
        self.launch(resume=self.options.resume)

    def launch(self, resume: bool) -> None:
        """Supervisor._launch: a new coordinator, told about a stop asked for before it."""
        if self.abandoned or self.outcome:
            return
        self.trace.coordinators += 1
        options = RunOptions(resume=resume, stop=self.stop_requested and self.scenario.protect_stop)
        self.coordinator = SimCoordinator(self, options)
        self._task = asyncio.ensure_future(self.coordinator.attempts())

    def request_stop(self) -> None:
        """JobHandle.stop(): remembered here, and sent to the coordinator of the moment."""
        if self.outcome:
            return
        self.stop_requested = True
        coord = self.coordinator
        if coord is not None:
            self.world.send(coord.proc, coord.stop)

    def coordinator_died(self) -> None:
        """The supervisor sees ActorDiedError and starts a new coordinator after a delay."""
        self.world.at(self.world.rng.uniform(0.05, 0.5), lambda: self.launch(resume=True))

    def check_task(self) -> None:
        task = self._task
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()


class SimCoordinator:
    """Runs attempts like JobCoordinator: begin (claim, choose, record), restore, checkpoint,
    watch, end (close the checkpointer, kill the subtasks)."""

    def __init__(self, run: SimRun, options: RunOptions):
        self.run, self.world, self.options = run, run.world, options
        self.proc = Proc(f"{run.run_id}:coordinator{run.trace.coordinators}")
        self.blocking = blocking_for(self.world, self.proc)
        # The Checkpointer's storage calls: in a coordinator cut off from the cluster they go
        # on after Ray reported it dead and the driver replaced it (faults.py, `cut_off`).
        self.io = Proc(f"{self.proc.name}:io")
        self.io_blocking = blocking_for(self.world, self.io, hold=lambda fn: run.scenario.cut_off(self, fn))
        self.attempt = 0
        self.subtasks: list[SimSubtask] = []
        self.checkpointer: Checkpointer | None = None
        self.refused: set[int] = set()
        self.stats = CheckpointStats()
        self.stopping = options.stop
        self.stop = Remote(self.world, self.proc, self._on_stop).remote

    # messages from subtasks and the driver
    def ack(self, attempt: int, checkpoint_id: int, meta: Any, error: str | None) -> None:
        if attempt == self.attempt and self.checkpointer is not None:
            asyncio.ensure_future(self.checkpointer.on_ack(checkpoint_id, meta, error))

    def source_finished(self, attempt: int, index: int) -> None:
        if attempt == self.attempt and self.checkpointer is not None:
            self.checkpointer.source_finished((self.run.outputs.chain(), index))

    def _on_stop(self) -> None:
        self.stopping = True
        self.run.scenario.maybe_crash_while_stopping(self)
        if self.proc.alive:
            for s in self.subtasks:
                s.stop_source.remote()

    def kill(self) -> None:
        self.io.alive = False
        self.cut_off()

    def cut_off(self) -> None:
        """Ray reports this coordinator dead; its Checkpointer's storage calls go on (`io`)."""
        self.proc.alive = False
        for s in self.subtasks:  # Ray ends actors with their owner
            s.kill()

    async def attempts(self) -> None:
        """Attempts until one finishes, the run fails (R5), or this coordinator dies."""
        run, store = self.run, self.run.store
        restoring = self.options.resume
        while True:
            try:
                self.attempt, manifest = await recovery.begin_attempt(
                    store, run.run_id, self.refused, restoring=restoring,
                    max_parallelism=run.scenario.max_parallelism,
                    keyed=True, blocking=self.blocking)
            except RestoreError as exc:  # R5: the run has checkpoints and none can be restored
                run.outcome = f"failed: {exc}"
                run.log(f"{self.proc.name} fails: {exc}")
                return
            restoring = True
            run.trace.attempts += 1
            run.log(f"{self.proc.name} attempt {self.attempt} restores "
                    f"{f'{manifest.run_id}/{manifest.checkpoint_id}' if manifest else 'nothing'}")
            self.subtasks = []  # filled as they start: a coordinator that dies takes them along
            try:
                await self._restore(manifest)
                if run.changed:  # it must not write into the line's sinks (changed.py)
                    run.outcome = "restored"
                    run.log(f"{self.proc.name} restored into the changed job: ends")
                    for s in self.subtasks:
                        s.kill()
                    return
            except _SubtaskDied:  # R1: the attempt ends; the next one restores again
                for s in self.subtasks:
                    s.kill()
                await self.world.sleep(self.world.rng.uniform(0.05, 0.5), self.proc)
                continue
            except RestoreError as exc:  # the state does not fit (a sink says why): the run fails
                run.outcome = f"failed: {exc}"
                run.log(f"{self.proc.name} fails: {exc}")
                for s in self.subtasks:
                    s.kill()
                return
            except (CorruptCheckpointError, StagedDataMissingError, FileNotFoundError) as exc:
                if isinstance(exc, StagedDataMissingError):
                    run.trace.missing_staged.append(str(exc))
                elif manifest.run_id == run.run_id and (why := breaks_kept(manifest, exc, run.scenario.damaged)):
                    # I6: its own checkpoints keep what they build on (an origin's is another run's to keep)
                    run.trace.unrestorable.append(f"{run.run_id}/{manifest.checkpoint_id} refused: {why}")
                run.trace.refused.append((run.run_id, manifest.checkpoint_id))
                await self.blocking(store.refuse, run.run_id, manifest.checkpoint_id, str(exc))
                self.refused.add(manifest.checkpoint_id)
                await self.world.sleep(0.1, self.proc)
                continue
            ids = await self.blocking(store.manifest_ids, run.run_id)
            base = manifest.checkpoint_id if manifest is not None else 0
            chain = run.outputs.chain()
            self.checkpointer = Checkpointer(
                job_name=JOB, guarantee="exactly_once", config=run.config, store=store, run_id=run.run_id,
                attempt=self.attempt, actors={(chain, s.index): s for s in self.subtasks},
                sources=[(chain, s.index) for s in self.subtasks], chains={chain: run.parallelism},
                next_id=max(ids + [base]) + 1, stats=self.stats,
                faults=Injector((), attempt=self.attempt, coordinator=True),
                max_parallelism=run.scenario.max_parallelism,
                state_steps=[s.step_id for s in run.outputs.steps()], clock=lambda: self.world.now,
                blocking=self.io_blocking, first_after=0.1 if self.attempt > 1 else None)  # C1, as after a failure
            self.checkpointer.start_snapshot_calls()
            for s in self.subtasks:
                s.start()
            if self.stopping:  # _go_live: a stop asked for before the attempt ran
                for s in self.subtasks:
                    s.stop_source.remote()
            outcome = await self._watch()
            checkpointer, self.checkpointer = self.checkpointer, None
            await checkpointer.close()  # R1
            self.stats = checkpointer.stats
            for s in self.subtasks:
                s.kill()
            if outcome == "finished":
                run.outcome = "stopped" if self.stopping else "finished"
                run.log(f"{self.proc.name} {run.outcome}")
                return
            await self.world.sleep(self.world.rng.uniform(0.05, 0.5), self.proc)

    async def _restore(self, manifest: Any) -> None:
        """R4: every snapshot verified before it is unpickled, merged by step id for each new
        subtask; then the sinks recover, each subtask in turn."""
        run = self.run
        states, parts = [], {}
        if manifest is not None:
            store = run.store if manifest.run_id == run.run_id else CheckpointStore(run.store.root, run.store.storage)
            for meta in manifest.snapshots:
                data = await self.blocking(store.read_snapshot, meta)
                states.append(store.verify_snapshot(data, meta))
            steps = run.outputs.steps()
            for index in range(run.parallelism):  # I5, as load_state: the subtask's own snapshot of a source chain
                parts[index] = recovery.continued_parts(states, list(manifest.snapshots), True, steps, index,
                                                        run.parallelism)
            for meta, state in zip(manifest.snapshots, states):  # I5, as recovery.py: per key
                if state.changelog:  # changes over earlier parts: storage reads
                    await self.blocking(materialize, store.storage, state)
                else:  # window rows (0.8): no read, so no blocking call to shift the schedule's draws
                    materialize(store.storage, state)
                captured = run.trace.captured.get(meta.key)
                if captured is not None and logical_state(state.keyed) != captured:
                    run.trace.state_mismatches.append(f"{meta.key}: restored {logical_state(state.keyed)}, "
                                                      f"captured {captured}")
        for index in range(run.parallelism):
            merged = merge_states(states, run.outputs.steps(), index, run.parallelism,
                                  run.scenario.max_parallelism) \
                if manifest is not None else None
            if merged is not None:
                merged.parts = parts[index]
                run.restored_steps.update(step_id for step_id, table in merged.keyed.items() if len(table))
            subtask = SimSubtask(run, self, index, run.parallelism, self.attempt, merged)
            self.subtasks.append(subtask)
            if manifest is not None or self.attempt > 1:
                await self._call(subtask, subtask.recover, manifest.checkpoint_id if manifest else 0)

    async def _call(self, subtask: SimSubtask, fn: Any, *args: Any) -> Any:
        """A call on a subtask that answers, or raises _SubtaskDied as Ray's ActorDiedError does."""
        call = asyncio.ensure_future(subtask.blocking(fn, *args))
        while not call.done():
            if not subtask.proc.alive:  # what it sent still lands (the call goes on); no answer comes
                raise _SubtaskDied(subtask.proc.name)
            await asyncio.wait([call, self.world.sleep(0.02, self.proc)], return_when=asyncio.FIRST_COMPLETED)
        return call.result()

    async def _watch(self) -> str:
        while True:
            await self.world.sleep(0.04, self.proc)
            if any(not s.proc.alive or s.failed for s in self.subtasks):
                self.run.log(f"{self.proc.name} sees a subtask gone or failed")
                return "failed"
            self.checkpointer.tick()
            if self.checkpointer.failure is not None:
                self.run.log(f"{self.proc.name} fails the attempt: {self.checkpointer.failure}")
                return "failed"
            if all(s.finished for s in self.subtasks):
                return "finished"


def watch_restore_choices(trace: Trace) -> Any:
    """Wrap recovery.choose_checkpoint to record, at the instant of each choice, whether a
    run chose its origin while it had a checkpoint of its own that counted (R5)."""
    real = recovery.choose_checkpoint

    def choose(store: CheckpointStore, run_id: str, refused: set[int], **kwargs: Any) -> Any:
        points = store.restore_points(run_id)
        own = []
        for checkpoint_id in store.manifest_ids(run_id):
            try:
                m = store.load_manifest(run_id, checkpoint_id)
            except CorruptCheckpointError:
                own.append(checkpoint_id)
                continue
            if not store.is_void(m, points):
                own.append(checkpoint_id)
        try:
            chosen = real(store, run_id, refused, **kwargs)
        finally:
            trace.choices[run_id] = trace.choices.get(run_id, 0) + 1
        if chosen is not None and chosen.run_id != run_id and own:
            trace.rewinds.append(f"run {run_id} restored its origin {chosen.run_id}/{chosen.checkpoint_id} "
                                 f"although it has checkpoints of its own that count: {own}")
        return chosen

    return choose


__all__ = ["SimRun", "SimCoordinator", "watch_restore_choices", "SimStorage", "SimFailure"]
