"""The coordinator's side of the checkpoint protocol for one attempt (docs/protocol.md):
it starts checkpoints (C1), publishes the manifest at the commit point (C5), tells the
subtasks a checkpoint completed or was aborted (C6, C6a), and applies retention (C7).
C2-C4 run in the subtasks (checkpointing/subtask_side.py).

When the attempt ends, `close()` refuses every later acknowledgement and waits for a
manifest write in flight, so that everything this attempt published is visible before
recovery lists the manifests, and nothing it starts afterwards can publish.

The Checkpointer talks to its subtasks only through their handles' `.remote()` calls,
to storage only through `blocking(fn, *args)`, and reads time from `clock`, so that the
protocol simulation (tests/simulation) drives this same code with fake handles, a
simulated store and a virtual clock.

The object-store tier: for each subtask one `next_snapshot()` call is kept pending. The
subtask answers it with the bytes of its next snapshot, so the object is owned here and
survives the subtask's process. Answers come in checkpoint order, and each
acknowledgement (even of an aborted checkpoint) moves that subtask's queue by one, so
the k-th answered call holds the k-th snapshot.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from raystream._runtime.plan.physical import SubtaskKey
from raystream._runtime.transport.blocking import Blocking, in_thread
from raystream._runtime.state.store import CheckpointStore
from raystream.testing.injector import Injector
from raystream._runtime.state.manifest import Manifest, versions
from raystream._runtime.state.snapshot import SnapshotMeta
from raystream.config import CheckpointConfig
from raystream.result import CheckpointStats

logger = logging.getLogger(__name__)


@dataclass
class Pending:
    checkpoint_id: int
    final: bool
    started: float
    acks: dict[SubtaskKey, SnapshotMeta] = field(default_factory=dict)


class Checkpointer:
    def __init__(self, *, job_name: str, guarantee: str, config: CheckpointConfig, store: CheckpointStore,
                 run_id: str, attempt: int, actors: dict[SubtaskKey, Any], sources: list[SubtaskKey],
                 chains: dict[str, int], next_id: int, stats: CheckpointStats, faults: Injector,
                 max_parallelism: int = 0, state_steps: list[str] | None = None, clock: Callable[[], float] = time.monotonic,
                 blocking: Blocking = in_thread, first_after: float | None = None):
        """`first_after`: seconds to the first checkpoint, when sooner than `config.interval`."""
        self.job_name, self.guarantee, self.config = job_name, guarantee, config
        self.store, self.run_id, self.attempt = store, run_id, attempt
        self.actors, self.sources, self.chains = actors, sources, chains
        self.next_id = next_id
        self.stats = stats
        self.faults = faults
        self.max_parallelism = max_parallelism
        self.state_steps = list(state_steps or [])
        self.clock, self.blocking = clock, blocking
        self.closed = False
        self._publishing: asyncio.Future | None = None
        self._writing: int | None = None  # the checkpoint whose manifest write (C5) is in flight
        self.pending: Pending | None = None
        self.last_start = self.last_end = clock()
        if first_after is not None and first_after < config.interval:
            self.last_start -= config.interval - first_after  # C1: the attempt after a failure commits soon
        self.consecutive_failures = 0
        self.finished_sources: set[SubtaskKey] = set()
        self.final_committed = False
        self.failure: str | None = None  # set when the attempt must end
        self._calls: dict[SubtaskKey, collections.deque] = {k: collections.deque() for k in actors}
        self.refs: dict[int, dict[SubtaskKey, Any]] = {}  # object-store copies of complete checkpoints

    # --- object-store tier ----------------------------------------------------------------

    def start_snapshot_calls(self) -> None:
        for key, actor in self.actors.items():
            self._calls[key].append(actor.next_snapshot.remote())

    def _take_ref(self, key: SubtaskKey) -> Any:
        ref = self._calls[key].popleft() if self._calls[key] else None
        self._calls[key].append(self.actors[key].next_snapshot.remote())
        return ref

    # --- C1 -------------------------------------------------------------------------------

    def tick(self) -> None:
        """Start a checkpoint if one is due; abort one that timed out."""
        now = self.clock()
        if self.closed or self.failure is not None:  # an attempt that must end starts nothing more
            return
        if self.pending is not None:
            # A manifest write in flight is never aborted: it lands (complete) or fails (aborted).
            writing = self._writing == self.pending.checkpoint_id
            if now - self.pending.started > self.config.timeout and not writing:
                self._abort(f"checkpoint {self.pending.checkpoint_id} timed out after {self.config.timeout}s")
            return
        if self.final_committed:
            return
        if len(self.finished_sources) == len(self.sources):
            self._trigger(final=True)  # every source is exhausted: the last checkpoint
        elif now - self.last_start >= self.config.interval and now - self.last_end >= self.config.min_pause:
            self._trigger(final=False)

    def _trigger(self, final: bool) -> None:
        n = self.next_id
        self.next_id += 1
        self.last_start = self.clock()
        self.pending = Pending(n, final, self.last_start)
        for key in self.sources:
            self.actors[key].trigger_checkpoint.remote(n, final)
        logger.debug("checkpoint %d started%s", n, " (final)" if final else "")

    def source_finished(self, key: SubtaskKey) -> None:
        self.finished_sources.add(key)

    # --- C5 to C7 --------------------------------------------------------------------------

    async def on_ack(self, checkpoint_id: int, meta: SnapshotMeta, error: str | None) -> None:
        if self.closed:  # the attempt is over: nothing it acknowledges can be published
            return
        key = (meta.chain, meta.subtask)
        ref = self._take_ref(key)
        pending = self.pending
        if pending is None or pending.checkpoint_id != checkpoint_id:
            return  # an aborted checkpoint
        if error is not None:
            self._abort(f"checkpoint {checkpoint_id} declined by {meta.chain}[{meta.subtask}]: {error}")
            return
        pending.acks[key] = meta
        self.refs.setdefault(checkpoint_id, {})[key] = ref
        if len(pending.acks) == len(self.actors):
            if self.faults:
                self.faults.hit("acks_complete", checkpoint_id)
            self._publishing = asyncio.ensure_future(self._complete(pending))
            await asyncio.shield(self._publishing)

    async def close(self) -> None:
        """End this attempt's checkpoint work: refuse later acknowledgements and wait until
        a manifest write in flight has landed or failed."""
        self.closed = True
        if self._publishing is not None and not self._publishing.done():
            await asyncio.wait([self._publishing])

    async def _complete(self, pending: Pending) -> None:
        n = pending.checkpoint_id
        manifest = Manifest(
            job=self.job_name, run_id=self.run_id, checkpoint_id=n, attempt=self.attempt,
            guarantee=self.guarantee, created=time.time(), chains=dict(self.chains),
            snapshots=sorted(pending.acks.values(), key=lambda m: (m.chain, m.subtask)),
            completed_total=self.stats.completed + 1, failed_total=self.stats.failed, versions=versions(),
            max_parallelism=self.max_parallelism, state_steps=self.state_steps, final=pending.final,
            duration=self.clock() - pending.started,
        )
        try:  # F3: a coordinator of an older attempt publishes nothing
            current = await self.blocking(self.store.is_current, self.run_id, self.attempt)
        except Exception as exc:
            if self.pending is pending:
                self._abort(f"checkpoint {n}: reading the attempts failed: {type(exc).__name__}: {exc}")
            return
        if self.pending is not pending or self.closed:
            return  # aborted by its timeout meanwhile, or the attempt ended: it is never published
        if not current:
            self.failure = f"attempt {self.attempt} was replaced by a newer attempt; it publishes nothing"
            self.pending = None
            return
        try:  # C5: the commit point
            before_publish = (lambda: self.faults.hit("manifest_writing", n)) if self.faults else None
            self._writing = n
            committed = await self.blocking(self.store.commit, manifest, before_publish)
        except Exception as exc:  # it may have landed (storage reads a lost answer back, but that can fail too)
            self._undecided(f"checkpoint {n}: writing the manifest failed, and whether it landed is unknown: "
                            f"{type(exc).__name__}: {exc}")
            return
        finally:
            self._writing = None
        if not committed:
            self._undecided(f"checkpoint {n}: a manifest with this id exists already; another coordinator is running")
            return
        self.pending = None
        self.last_end = self.clock()
        self.consecutive_failures = 0
        self.stats = dataclasses.replace(
            self.stats, completed=self.stats.completed + 1, last_id=n,
            last_duration=self.last_end - pending.started,
            last_alignment=max(m.alignment for m in pending.acks.values()),
            last_bytes=sum(m.size for m in pending.acks.values()),
        )
        if self.faults:
            self.faults.hit("manifest_written", n)
        if self.closed:  # the attempt ended meanwhile: the restore commits n instead
            return
        for actor in self.actors.values():  # C6
            actor.notify_complete.remote(n)
        if pending.final:
            self.final_committed = True
        for old in [i for i in self.refs if i <= n - self.config.retain]:
            del self.refs[old]
        try:  # C7
            await self.blocking(self.store.retain, self.run_id, self.config.retain, self.attempt)
        except Exception as exc:  # cleanup can wait for the next checkpoint
            logger.warning("checkpoint retention failed: %s", exc)

    def _undecided(self, reason: str) -> None:
        """The commit point's outcome is unknown: no subtask may be told that the checkpoint
        is aborted (it may be complete), nor start the next one on top of it. The attempt
        ends; the restore (R3) finds out from storage whether the manifest exists."""
        self.pending = None
        self.stats = dataclasses.replace(self.stats, failed=self.stats.failed + 1)
        self.failure = reason
        logger.warning("%s; the attempt ends", reason)

    def _abort(self, reason: str) -> None:
        pending, self.pending = self.pending, None
        self.last_end = self.clock()
        self.consecutive_failures += 1
        self.stats = dataclasses.replace(self.stats, failed=self.stats.failed + 1)
        if pending is not None:
            self.refs.pop(pending.checkpoint_id, None)
            if not self.closed:  # C6a: its fate is decided before the next one starts (C1)
                for actor in self.actors.values():
                    actor.notify_aborted.remote(pending.checkpoint_id)
        logger.warning("%s (%d in a row)", reason, self.consecutive_failures)
        if pending is not None and pending.final:
            self.failure = f"the final checkpoint failed: {reason}"
        elif self.consecutive_failures > self.config.tolerable_failures:
            self.failure = (f"{self.consecutive_failures} checkpoints failed in a row "
                            f"(tolerable_failures={self.config.tolerable_failures}); last: {reason}")
