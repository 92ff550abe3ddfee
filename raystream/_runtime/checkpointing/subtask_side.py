"""The subtask's side of the checkpoint protocol (docs/protocol.md, C3, C4, C6 and F3).

`SubtaskCheckpoints` is a part that each SubtaskActor owns: the queue of snapshot bytes
that answers the coordinator's pending `next_snapshot()` call, the sequence of uploads
that acknowledges checkpoints in order, the committed-checkpoint counter with its lock,
and the fence before a commit. It holds no Ray handle: acknowledgements go out through
the `ack` callable the actor attaches, blocking storage I/O through `blocking`, so unit
tests drive it with fakes.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raystream._runtime.transport.blocking import Blocking, in_thread
from raystream._runtime.state.changelog import StateChangelog, base_key, merge
from raystream._runtime.state.store import CheckpointStore
from raystream.testing.injector import Injector
from raystream._runtime.operators.plain import SinkOp
from raystream._runtime.state.snapshot import PartRef, SnapshotMeta, SubtaskState, encode
from raystream.config import CheckpointConfig
from raystream.errors import StaleAttemptError

logger = logging.getLogger(__name__)

Ack = Callable[[int, SnapshotMeta, "str | None"], Awaitable[None]]
Merger = Callable[[str, list[PartRef], str], Awaitable[PartRef]]  # (root, parts, key) -> the new base


async def merge_in_ray(root: str, parts: list[PartRef], key: str) -> PartRef:
    # on this subtask's node (soft): a local checkpoint directory is on this node's disk
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return await merge.options(scheduling_strategy=here).remote(root, parts, key)

_FENCE_TRIES = 8  # about 30 s of retries with backoff: the final commit has no later checkpoint


class SubtaskCheckpoints:
    def __init__(self, *, name: str, store: CheckpointStore, run_id: str, attempt: int, chain: str, subtask: int,
                 faults: Injector, on_fatal: Callable[[BaseException], None], blocking: Blocking = in_thread,
                 config: CheckpointConfig | None = None, merger: Merger = merge_in_ray):
        self.name, self.store = name, store
        self.run_id, self.attempt, self.chain, self.subtask = run_id, attempt, chain, subtask
        self.faults = faults
        self.on_fatal = on_fatal  # stops the subtask
        self.blocking = blocking
        self.sinks: list[SinkOp] = []
        self.ack: Ack | None = None
        self.last_barrier = 0  # the newest checkpoint this subtask snapshotted
        self.committed = 0  # the newest checkpoint this subtask was told is complete
        self.last_size = 0  # bytes of the newest snapshot (metrics)
        self.last_alignment = 0.0  # seconds its barrier alignment took
        config = config or CheckpointConfig()
        self.changelog = StateChangelog(incremental=config.incremental, base_every=config.base_every,
                                        compact_above=config.compact_above)
        self.merger = merger
        self._snapshots: asyncio.Queue[bytes] = asyncio.Queue()
        self._upload_tail: asyncio.Future | None = None
        self._committed_event = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._aborted: set[int] = set()  # checkpoints the coordinator aborted (C6a)
        self._settled = asyncio.Event()  # a checkpoint was committed or aborted, or the subtask failed
        self._interrupted: BaseException | None = None

    def attach(self, sinks: list[SinkOp], ack: Ack) -> None:
        """Once the actor is set up: the sink writers that take part, and where acks go."""
        self.sinks, self.ack = sinks, ack

    # --- C3, C4 ---------------------------------------------------------------------------

    async def take(self, checkpoint_id: int, alignment: float, capture: Callable[[], SubtaskState],
                   forward: Callable[[int], Awaitable[None]], source_records: int = 0) -> None:
        """Checkpoint `checkpoint_id` on this subtask:
          C3. sinks pre-commit the transaction of this epoch; `capture()` gives the state,
              pickled at once (the consistent copy); `forward` sends the barrier on every
              output, after the records before it;
          C4. in the background: the bytes answer the coordinator's pending next_snapshot
              call (object-store tier), are uploaded (durable tier), then acknowledged,
              in checkpoint order.
        """
        await self._settle(checkpoint_id)
        self.last_barrier = checkpoint_id
        for op in self.sinks:
            op.pre_commit(checkpoint_id)
            if self.faults:
                self.faults.hit("sink_pre_committed", checkpoint_id)
        state = capture()  # keyed state as changes over earlier parts when incremental (changelog.py, I2)
        data, sha = encode(state)
        pending = [c for sink in state.sinks.values() for c, _ in sink.pending]  # as captured: C6 may run next
        await forward(checkpoint_id)
        key = CheckpointStore.snapshot_key(self.run_id, checkpoint_id, self.attempt, self.chain, self.subtask)
        meta = SnapshotMeta(self.chain, self.subtask, key, sha, len(data), alignment, source_records,
                            {k: list(v) for k, v in state.audit.items()}, tuple(p.key for p in state.parts),
                            min(pending, default=0))
        part = PartRef(key, sha, len(data), checkpoint_id, not state.changelog)
        self.changelog.added(part)
        self.last_size, self.last_alignment = len(data), alignment
        self._upload_tail = asyncio.ensure_future(self._upload(self._upload_tail, checkpoint_id, data, meta, part))

    async def next_snapshot(self) -> bytes:
        """The next snapshot's bytes. The coordinator keeps one such call pending, so it
        owns the returned object and it outlives this process."""
        return await self._snapshots.get()

    async def _upload(self, previous: asyncio.Future | None, checkpoint_id: int, data: bytes,
                      meta: SnapshotMeta, part: PartRef) -> None:
        if previous is not None:  # acknowledgements go out in checkpoint order
            await asyncio.shield(previous)
        self._snapshots.put_nowait(data)
        error = self.changelog.declined(meta.parts)  # I3
        if error is None:
            try:
                await self.blocking(self.store.storage.put, meta.key, data)
            except Exception as exc:  # declined: the coordinator aborts the checkpoint
                error = f"{type(exc).__name__}: {exc}"
        if error is not None:
            self.changelog.upload_failed(part)
            logger.warning("%s: snapshot of checkpoint %d declined: %s", self.name, checkpoint_id, error)
        if self.faults and error is None:
            self.faults.hit("snapshot_uploaded", checkpoint_id)
        if error is None:
            due = self.changelog.due(part)
            if due is not None:
                self.changelog.merging = True
                asyncio.ensure_future(self._merge(due))
        if self.ack is not None:
            await self.ack(checkpoint_id, meta, error)

    async def _merge(self, parts: list[PartRef]) -> None:
        """I4: merge `parts` into a new base in another process; the data path goes on."""
        upto = parts[-1]
        key = base_key(self.run_id, self.chain, self.subtask, upto.checkpoint_id, self.attempt)
        try:
            base = await self.merger(self.store.root, parts, key)
            self.changelog.merged(upto, base)
            logger.info("%s: %d state parts (%d bytes) merged into a base of %d bytes at checkpoint %d",
                        self.name, len(parts), sum(p.size for p in parts), base.size, upto.checkpoint_id)
        except Exception as exc:  # the parts keep growing; the next due part tries again
            logger.warning("%s: merging state at checkpoint %d failed: %s: %s", self.name,
                           upto.checkpoint_id, type(exc).__name__, exc)
        finally:
            self.changelog.merging = False

    # --- C6a: before a pre-commit, the earlier checkpoints are settled ------------------

    def abort(self, checkpoint_id: int) -> None:
        """C6a: the coordinator aborted `checkpoint_id`."""
        self._aborted.add(checkpoint_id)
        self._settled.set()

    async def _settle(self, checkpoint_id: int) -> None:
        """C6a: before pre-committing `checkpoint_id`, wait until every earlier checkpoint
        whose transactions a sink of this subtask holds is committed here or known
        aborted. Its fate was decided before `checkpoint_id` started (C1); only the
        notification may still be on its way, behind the barrier. Then offer the aborted
        ones' transactions to their writers. So a sink never pre-commits on top of an
        undecided transaction of its own, and holds few prepared at a time."""
        while True:
            if self._interrupted is not None:
                raise self._interrupted
            waiting = [c for op in self.sinks for c, _ in op.pending if c < checkpoint_id and c not in self._aborted]
            if not waiting:
                break
            self._settled.clear()
            await self._settled.wait()
        aborted = {c for c in self._aborted if c < checkpoint_id}
        if aborted:
            for op in self.sinks:
                op.abort_pending(aborted)
        self._aborted -= {c for c in self._aborted if c < checkpoint_id and
                          not any(p == c for op in self.sinks for p, _ in op.pending)}

    # --- C6 -------------------------------------------------------------------------------

    async def commit(self, checkpoint_id: int) -> None:
        """C6: checkpoint `checkpoint_id` is complete; after the fence (F3), sinks commit its
        transactions and older ones still pending (of checkpoints that were aborted)."""
        async with self._commit_lock:
            for op in self.sinks:
                ready = [p for p in op.pending if p[0] <= checkpoint_id]
                if not ready:
                    continue
                try:
                    current = await self._still_current()
                except Exception as exc:
                    self.on_fatal(exc)
                    return
                if not current:
                    self.on_fatal(StaleAttemptError(
                        f"{self.name} of attempt {self.attempt} was replaced by a newer attempt; it commits nothing"))
                    return
                try:
                    await self.blocking(op.commit_all, [txn for _, txn in ready])
                except Exception as exc:  # keep them pending: the next restore commits them
                    self.on_fatal(exc)
                    raise
                if self.faults:
                    self.faults.hit("sink_committed", checkpoint_id)
                op.pending = [p for p in op.pending if p not in ready]
            self.committed = max(self.committed, checkpoint_id)
            self._committed_event.set()
            self._settled.set()

    async def _still_current(self) -> bool:
        """F3, the fence before a commit. Storage that cannot be read is retried for about
        30 s, then the subtask fails and a restore commits instead."""
        delay = 0.2
        for attempt in range(_FENCE_TRIES):
            try:
                return await self.blocking(self.store.is_current, self.run_id, self.attempt)
            except Exception as exc:
                if attempt == _FENCE_TRIES - 1:
                    raise
                logger.warning("%s: cannot read the attempts (%s); retrying", self.name, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 8.0)
        return False

    async def wait_committed(self, fatal: Callable[[], BaseException | None]) -> None:
        """At the end of the stream: wait until the last checkpoint this subtask took part
        in is committed, so its sinks have made everything visible. Raises `fatal()` when
        the subtask fails meanwhile (`interrupt` wakes this)."""
        while self.committed < self.last_barrier:
            self._committed_event.clear()
            await self._committed_event.wait()
            error = fatal()
            if error is not None:
                raise error

    def interrupt(self, error: BaseException | None = None) -> None:
        """The subtask failed with `error`: waits here end (wait_committed checks the
        subtask's own failure; a wait to settle raises `error`)."""
        self._interrupted = error or RuntimeError("the subtask stopped")
        self._committed_event.set()
        self._settled.set()
