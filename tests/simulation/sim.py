"""A deterministic, seeded simulation of the checkpoint and recovery protocols.

The code under test is the real protocol code: the coordinator's `Checkpointer`
(trigger, acks, manifest commit, notify, retention, close), `recovery.begin_attempt`
and `choose_checkpoint` (claim, choose, record), `CheckpointStore` (attempts, restore
records, void manifests, refusals), snapshot encoding and verification, and FileSink's
writer (`pre_commit`, `commit`, `recover`) writing real files in a temporary directory.

Only the edges are simulated (world.py), all decided by one seed:
- time: a virtual clock; every wait is an event in a heap;
- storage: an in-memory `Storage` whose calls take a delay to land and another to
  answer, sometimes seconds (a slow PUT that lands after recovery began), and whose
  manifest PUT sometimes loses its response after landing;
- messages between processes (barrier requests, acks, notifications): delays;
- processes: a subtask or the coordinator dies at a random time, or right after a
  manifest lands. A dead process runs nothing more, but writes it had in flight still
  land. Subtasks die with their coordinator, and a new coordinator resumes the run
  from storage alone;
- damage: a snapshot of the newest checkpoint gets a flipped bit.

The job: P source partitions of integers; each record is keyed by (partition, id % K)
and a running sum per key goes to FileSink as {"id", "key", "total"}. After a run the
invariants are checked (`check`): every id committed exactly once, every total the
running sum of its key's ids, no checkpoint's staged data went missing, no transaction
committed for a void manifest.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from raystream._runtime.checkpoint_store import CheckpointStore
from raystream._runtime.checkpointer import Checkpointer
from raystream._runtime.injector import Injector
from raystream._runtime.manifest import Manifest
from raystream._runtime.recovery import begin_attempt
from raystream._runtime.snapshot import SinkState, SnapshotMeta, SubtaskState, encode
from raystream.config import CheckpointConfig
from raystream.errors import CorruptCheckpointError, RestoreError, StagedDataMissingError
from raystream.result import CheckpointStats
from raystream.sinks import FileSink, SinkContext, read_files

from .world import Proc, Remote, SimFailure, SimStorage, World, blocking_for

logger = logging.getLogger(__name__)

RUN = "run"
CHAIN = "src+sum+out"


# --- the job ------------------------------------------------------------------------------


@dataclass
class Params:
    partitions: int = 2
    records: int = 40  # per partition
    keys: int = 3
    retain: int = 2


@dataclass
class Trace:
    commits: list[tuple[int, int]] = field(default_factory=list)  # (attempt, complete checkpoint) a sink committed for
    missing_staged: list[str] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    coordinators: int = 0
    attempts: int = 0
    crashes: int = 0


class SimSubtask:
    """One source partition chained with a keyed running sum and a FileSink writer."""

    def __init__(self, job: "SimJob", coord: "SimCoordinator", index: int, attempt: int, state: SubtaskState | None,
                 writer: Any):
        self.job, self.coord, self.index, self.attempt = job, coord, index, attempt
        self.world = job.world
        self.proc = Proc(f"subtask{index}@a{attempt}")
        self.blocking = blocking_for(self.world, self.proc)
        self.offset = state.source_offsets.get(str(index), 0) if state else 0
        self.sums: dict[Any, int] = dict(state.keyed.get("sum", {})) if state else {}
        self.pending: list[tuple[int, Any]] = []
        self.writer = writer
        self.barriers: collections.deque[tuple[int, bool]] = collections.deque()
        self.last_barrier = 0
        self.committed = 0
        self.final_taken = False
        self.told_finished = False
        self.finished = False
        self.failed = False
        self._uploads: asyncio.Future | None = None
        self._commit_lock = asyncio.Lock()
        self.trigger_checkpoint = Remote(self.world, self.proc, self._on_trigger)
        self.next_snapshot = Remote(self.world, self.proc, lambda: None)
        self.notify_complete = Remote(self.world, self.proc, self._on_notify)

    def start(self) -> None:
        self.world.at(self.world.rng.uniform(0.001, 0.02), self._step)

    def _on_trigger(self, checkpoint_id: int, final: bool) -> None:
        self.barriers.append((checkpoint_id, final))

    def _step(self) -> None:
        if not self.proc.alive or self.final_taken:
            return
        if self.barriers:
            checkpoint_id, final = self.barriers.popleft()
            self._checkpoint(checkpoint_id)
            if final:
                self.final_taken = True
                return
        elif self.offset < self.job.params.records:
            self._emit(self.world.rng.randint(1, 4))
        elif not self.told_finished:
            self.told_finished = True
            self.world.send(self.coord.proc, self.coord.source_finished, self.attempt, self.index)
        self.world.at(self.world.rng.uniform(0.002, 0.03), self._step)

    def _emit(self, n: int) -> None:
        p, parts = self.index, self.job.params.partitions
        rows = []
        for _ in range(min(n, self.job.params.records - self.offset)):
            record = p + self.offset * parts
            key = (p, record % self.job.params.keys)
            self.sums[key] = self.sums.get(key, 0) + record
            rows.append({"id": record, "key": list(key), "total": self.sums[key]})
            self.offset += 1
        self.writer.write_batch(rows)

    def _checkpoint(self, checkpoint_id: int) -> None:
        """Subtask checkpoint steps: pre-commit, snapshot at once, upload and ack in order."""
        self.last_barrier = checkpoint_id
        txn = self.writer.pre_commit(checkpoint_id)
        if txn is not None:
            self.pending.append((checkpoint_id, txn))
        state = SubtaskState(checkpoint_id, CHAIN, self.index, self.job.params.partitions,
                             source_offsets={str(self.index): self.offset}, keyed={"sum": dict(self.sums)},
                             sinks={"out": SinkState(None, list(self.pending))})
        data, sha = encode(state)
        key = CheckpointStore.snapshot_key(RUN, checkpoint_id, self.attempt, CHAIN, self.index)
        meta = SnapshotMeta(CHAIN, self.index, key, sha, len(data))
        self._uploads = asyncio.ensure_future(self._upload(self._uploads, key, data, meta, checkpoint_id))

    async def _upload(self, previous: asyncio.Future | None, key: str, data: bytes, meta: SnapshotMeta,
                      checkpoint_id: int) -> None:
        if previous is not None:
            await previous
        error = None
        try:
            await self.blocking(self.job.store.storage.put, key, data)
        except Exception as exc:  # noqa: BLE001
            error = f"{type(exc).__name__}: {exc}"
        self.world.send(self.coord.proc, self.coord.ack, self.attempt, checkpoint_id, meta, error)

    def _on_notify(self, checkpoint_id: int) -> None:
        asyncio.ensure_future(self._commit(checkpoint_id))

    async def _commit(self, checkpoint_id: int) -> None:
        """Like the real subtask: the fence first, then the sink commits."""
        async with self._commit_lock:
            ready = [p for p in self.pending if p[0] <= checkpoint_id]
            if ready:
                if not await self.blocking(self.job.store.is_current, RUN, self.attempt):
                    self.failed = True  # a stale attempt: commits nothing
                    return
                for _, txn in ready:  # committed because checkpoint_id is complete
                    await self.blocking(self._commit_txn, checkpoint_id, txn)
                self.pending = [p for p in self.pending if p not in ready]
            self.committed = max(self.committed, checkpoint_id)
            if self.final_taken and self.committed >= self.last_barrier:
                self.finished = True

    def _commit_txn(self, checkpoint_id: int, txn: Any) -> None:
        self.job.world.log.append(f"{self.world.now:.3f} {self.proc.name} commits {checkpoint_id}"
                                  f"{'' if self.proc.alive else ' (dead, in flight)'}")
        self.writer.commit(txn)
        self.job.trace.commits.append((self.attempt, checkpoint_id))


class SimCoordinator:
    """Runs attempts like JobCoordinator: begin (claim, choose, record), restore, checkpoint,
    watch, end (close the checkpointer, kill the subtasks)."""

    def __init__(self, job: "SimJob", resume: bool):
        self.job, self.world, self.resume = job, job.world, resume
        self.proc = Proc(f"coordinator{job.trace.coordinators}")
        self.blocking = blocking_for(self.world, self.proc)
        self.attempt = 0
        self.subtasks: list[SimSubtask] = []
        self.checkpointer: Checkpointer | None = None
        self.refused: set[int] = set()
        self.stats = CheckpointStats()
        self.finished = False

    # messages from subtasks
    def ack(self, attempt: int, checkpoint_id: int, meta: SnapshotMeta, error: str | None) -> None:
        if attempt == self.attempt and self.checkpointer is not None:
            asyncio.ensure_future(self.checkpointer.on_ack(checkpoint_id, meta, error))

    def source_finished(self, attempt: int, index: int) -> None:
        if attempt == self.attempt and self.checkpointer is not None:
            self.checkpointer.source_finished((CHAIN, index))

    def kill(self) -> None:
        self.proc.alive = False
        for s in self.subtasks:  # Ray ends actors with their owner
            s.proc.alive = False

    async def run(self) -> None:
        restoring = self.resume
        while True:
            try:
                self.attempt, manifest = await begin_attempt(
                    self.job.store, RUN, self.refused, restoring=restoring, max_parallelism=128, keyed=True,
                    blocking=self.blocking)
            except RestoreError as exc:
                raise SimFailure(f"restore refused: {exc}") from None
            restoring = True
            self.job.trace.attempts += 1
            self.world.log.append(f"{self.world.now:.3f} {self.proc.name} attempt {self.attempt} restores "
                                  f"{manifest.checkpoint_id if manifest else 0}")
            try:
                self.subtasks = await self._restore(manifest)
            except (CorruptCheckpointError, StagedDataMissingError) as exc:
                if isinstance(exc, StagedDataMissingError):
                    self.job.trace.missing_staged.append(str(exc))
                self.job.trace.refused.append(manifest.checkpoint_id)
                await self.blocking(self.job.store.refuse, RUN, manifest.checkpoint_id, str(exc))
                self.refused.add(manifest.checkpoint_id)
                await self.world.sleep(0.1, self.proc)
                continue
            ids = await self.blocking(self.job.store.manifest_ids, RUN)
            self.checkpointer = Checkpointer(
                job_name="sim", guarantee="exactly_once", config=self.job.config, store=self.job.store, run_id=RUN,
                attempt=self.attempt, actors={(CHAIN, s.index): s for s in self.subtasks},
                sources=[(CHAIN, s.index) for s in self.subtasks], chains={CHAIN: self.job.params.partitions},
                next_id=max(ids, default=0) + 1, stats=self.stats, faults=Injector((), attempt=self.attempt,
                                                                                   coordinator=True),
                max_parallelism=128, clock=lambda: self.world.now, blocking=self.blocking)
            self.checkpointer.start_snapshot_calls()
            for s in self.subtasks:
                s.start()
            outcome = await self._watch()
            checkpointer, self.checkpointer = self.checkpointer, None
            await checkpointer.close()  # recovery step 1
            self.stats = checkpointer.stats
            for s in self.subtasks:
                s.proc.alive = False
            if outcome == "finished":
                self.finished = True
                return
            await self.world.sleep(self.world.rng.uniform(0.05, 0.5), self.proc)

    async def _restore(self, manifest: Any) -> list[SimSubtask]:
        """Recovery step 4: verify each snapshot before unpickling it; sinks recover."""
        store, subtasks = self.job.store, []
        for index in range(self.job.params.partitions):
            state = None
            if manifest is not None:
                meta = manifest.snapshots_of(CHAIN)[index]
                data = await self.blocking(store.storage.get, meta.key)
                state = store.verify_snapshot(data, meta)
            ctx = SinkContext("out", index, self.job.params.partitions, transactional=True, run_id=RUN,
                              attempt=self.attempt)
            writer = self.job.sink.build_writer(ctx)
            txns = [txn for _, txn in state.sinks["out"].pending] if state else []
            subtask = SimSubtask(self.job, self, index, self.attempt, state, writer)
            await subtask.blocking(self._recover, subtask, writer, txns, manifest.checkpoint_id if manifest else 0)
            subtask.pending = []  # recover committed the restored transactions
            subtasks.append(subtask)
        return subtasks

    def _recover(self, subtask: SimSubtask, writer: Any, txns: list[Any], checkpoint_id: int) -> None:
        self.world.log.append(f"{self.world.now:.3f} {subtask.proc.name} recovers {checkpoint_id}"
                              f"{'' if subtask.proc.alive and self.proc.alive else ' (dead, in flight)'}")
        writer.recover(txns, checkpoint_id)

    async def _watch(self) -> str:
        while True:
            await self.world.sleep(0.02, self.proc)
            if any(not s.proc.alive or s.failed for s in self.subtasks):
                return "failed"
            self.checkpointer.tick()
            if self.checkpointer.failure is not None:
                return "failed"
            if all(s.finished for s in self.subtasks):
                return "finished"


class SimJob:
    def __init__(self, seed: int, out_dir: str, params: Params | None = None):
        self.seed = seed
        self.world = World(seed)
        self.params = params or Params()
        self.storage = SimStorage(self.world)
        self.store = CheckpointStore("sim/sim", self.storage)
        self.sink = FileSink(out_dir, rows_per_file=3)
        self.out_dir = out_dir
        rng = self.world.rng
        self.config = CheckpointConfig(interval=rng.choice([0.05, 0.1, 0.3]), retain=self.params.retain,
                                       timeout=rng.choice([1.0, 5.0]), tolerable_failures=rng.choice([0, 3]))
        self.trace = Trace()
        self.coordinator: SimCoordinator | None = None
        self._task: asyncio.Future | None = None
        self.crash_after_manifest = rng.random() < 0.3
        self.storage.on_manifest = self._maybe_crash_after_manifest

    # --- faults ---------------------------------------------------------------------------

    def _maybe_crash_after_manifest(self, key: str) -> None:
        """Bias toward the rare schedules: a crash right after a durable manifest write."""
        if self.crash_after_manifest and self.trace.crashes < 4 and self.world.rng.random() < 0.25:
            self.world.at(self.world.rng.uniform(0.0, 0.01), self._crash)

    def _crash(self) -> None:
        coord = self.coordinator
        if coord is None or coord.finished or not coord.proc.alive:
            return
        self.trace.crashes += 1
        live = [s for s in coord.subtasks if s.proc.alive]
        if live and self.world.rng.random() < 0.7:
            victim = self.world.rng.choice(live)
            victim.proc.alive = False
            self.world.log.append(f"{self.world.now:.3f} kill {victim.proc.name}")
        else:
            coord.kill()
            self.world.log.append(f"{self.world.now:.3f} kill {coord.proc.name}")
            self.world.at(self.world.rng.uniform(0.05, 0.5), lambda: self._launch(resume=True))

    def _damage(self) -> None:
        """Flip a bit in a snapshot of the newest manifest; the restore must refuse it."""
        manifests = self.storage.list(f"{RUN}/manifests/")
        if len(manifests) < 2:
            return
        snaps = self.storage.list(f"{RUN}/snapshots/{manifests[-1].rsplit('/', 1)[1].split('.')[0]}/")
        if snaps:
            key = self.world.rng.choice(snaps)
            data = bytearray(self.storage.objects[key])
            data[len(data) // 2] ^= 1
            self.storage.objects[key] = bytes(data)
            self.world.log.append(f"{self.world.now:.3f} damage {key}")
            self.world.at(0.0, self._crash)

    def _launch(self, resume: bool) -> None:
        self.trace.coordinators += 1
        self.coordinator = SimCoordinator(self, resume)
        self._task = asyncio.ensure_future(self.coordinator.run())

    # --- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        rng = self.world.rng
        for _ in range(rng.randint(0, 3)):
            self.world.at(rng.uniform(0.0, 3.0), self._crash)
        if rng.random() < 0.15:
            self.world.at(rng.uniform(0.5, 3.0), self._damage)
        self._launch(resume=False)

        def done() -> bool:
            task = self._task
            if task is not None and task.done() and task.exception() is not None:
                raise task.exception()
            return self.coordinator is not None and self.coordinator.finished

        await self.world.run(done, limit=600.0)

    def check(self) -> None:
        """The invariants on committed output and on the checkpoint store."""
        p = self.params
        rows = read_files(self.out_dir)
        counts = collections.Counter(r["id"] for r in rows)
        expected = set(range(p.partitions * p.records))
        lost = sorted(expected - set(counts))
        duplicated = sorted(i for i, n in counts.items() if n > 1)
        if lost or duplicated or set(counts) - expected:
            raise SimFailure(f"committed output: lost {lost[:10]}, duplicated {duplicated[:10]}")
        sums: dict[tuple, int] = {}
        for i in sorted(expected):
            key = (i % p.partitions, i % p.keys)
            sums[key] = sums.get(key, 0) + i
            row = next(r for r in rows if r["id"] == i)
            if row["total"] != sums[key] or tuple(row["key"]) != key:
                raise SimFailure(f"id {i}: total {row['total']} where the running sum of key {key} is {sums[key]}")
        if self.trace.missing_staged:
            raise SimFailure(f"a restored checkpoint's staged files were gone: {self.trace.missing_staged[0]}")
        points = self.store.restore_points(RUN)
        published = [Manifest.from_json(data) for data in self.storage.published]
        refused = self.store.refused(RUN)
        for attempt, checkpoint_id in self.trace.commits:
            # A sink commits for checkpoint n when its own attempt's coordinator published n.
            m = next((m for m in published if (m.checkpoint_id, m.attempt) == (checkpoint_id, attempt)), None)
            if m is None:
                raise SimFailure(f"attempt {attempt} committed for checkpoint {checkpoint_id}, which it never published")
            # A refused checkpoint was committed while it was valid, then retracted by the fall-back.
            if CheckpointStore.is_void(m, points) and checkpoint_id not in refused:
                raise SimFailure(f"attempt {attempt} committed checkpoint {checkpoint_id}, whose manifest is void")
        for key in self.storage.list(f"{RUN}/manifests/"):  # what a restore could still choose
            m = Manifest.from_json(self.storage.objects[key])
            if CheckpointStore.is_void(m, points) or m.checkpoint_id in refused:
                continue
            for meta in m.snapshots:
                try:
                    state = self.store.verify_snapshot(self.storage.objects[meta.key], meta)
                except (KeyError, CorruptCheckpointError):
                    continue  # damaged on purpose, or deleted by retention along with older manifests
                for _, txn in state.sinks["out"].pending:
                    for pending, final in txn.files:
                        if not os.path.exists(os.path.join(self.out_dir, pending)) and \
                                not os.path.exists(os.path.join(self.out_dir, final)):
                            raise SimFailure(f"manifest {m.checkpoint_id} lists {pending}, which is gone and "
                                             "was never committed")


def run_schedule(seed: int, out_dir: str, params: Params | None = None) -> Trace:
    """Run one seeded schedule and check its invariants; raises SimFailure naming the seed."""
    job = SimJob(seed, out_dir, params)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(job.run())
        job.check()
    except SimFailure as exc:
        raise SimFailure(f"seed {seed}: {exc}\nreplay: RAYSTREAM_SIM_SEED={seed} pytest tests/simulation\n"
                         + "\n".join(job.world.log[-60:])) from None
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
    return job.trace

