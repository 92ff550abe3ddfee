"""The subtask's side of the checkpoint protocol. A mixin of SubtaskActor."""
from __future__ import annotations

import asyncio
import logging

import ray

from raystream._runtime.channel import BARRIER
from raystream._runtime.checkpoint import CheckpointStore, SinkState, SnapshotMeta, SubtaskState, encode
from raystream._runtime.operators import KeyedOp
from raystream.errors import StaleAttemptError

logger = logging.getLogger(__name__)


class Snapshotting:
    """Needs from the actor: `spec`, `name`, `store`, `ops`, `parts`, `outputs`, `faults`,
    `coordinator`, `source_out`, `_snapshots`, `_upload_tail`, `_last_barrier`,
    `_committed`, `_committed_event`, `_commit_lock`, `_sinks()`, `_report()`,
    `_audit_state()`, `_fail()`."""

    async def next_snapshot(self) -> bytes:
        """Answered with the next snapshot's bytes. The coordinator keeps one such call
        pending, so it owns the returned object and it outlives this process."""
        return await self._snapshots.get()

    async def notify_complete(self, checkpoint_id: int) -> None:
        """C6: checkpoint `checkpoint_id` is committed; after the fence (F3), sinks commit its
        transactions and older ones still pending."""
        async with self._commit_lock:
            loop = asyncio.get_running_loop()
            for op in self._sinks():
                if op.pending:
                    ready = [p for p in op.pending if p[0] <= checkpoint_id]
                    try:
                        current = not ready or await self._still_current()
                    except Exception as exc:
                        self._fail(exc)
                        return
                    if not current:
                        self._fail(StaleAttemptError(
                            f"{self.name} of attempt {self.spec.attempt} was replaced by a newer attempt; "
                            "it commits nothing"))
                        return
                    try:
                        await loop.run_in_executor(None, op.commit_all, [txn for _, txn in ready])
                    except Exception as exc:  # keep them pending: the next restore commits them
                        self._fail(exc)
                        raise
                    if ready and self.faults:
                        self.faults.hit("sink_committed", checkpoint_id)
                    op.pending = [p for p in op.pending if p not in ready]
            self._committed = max(self._committed, checkpoint_id)
            self._committed_event.set()

    async def _still_current(self) -> bool:
        """The fence before a commit. Storage that cannot be read is retried for about 30 s
        (the final commit has no later checkpoint to wait for), then the subtask fails and
        a restore commits instead."""
        loop = asyncio.get_running_loop()
        delay = 0.2
        for attempt in range(8):
            try:
                return await loop.run_in_executor(None, self.store.is_current, self.spec.run_id, self.spec.attempt)
            except Exception as exc:
                if attempt == 7:
                    raise
                logger.warning("%s: cannot read the attempts (%s); retrying", self.name, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 8.0)
        return False

    async def _checkpoint(self, checkpoint_id: int, alignment: float) -> None:
        """Checkpoint steps on this subtask (docs/protocol.md):
          C3. sinks pre-commit the transaction of this epoch; the state is pickled at
              once (the consistent copy); the barrier goes out on every output, after
              the records before it;
          C4. in the background: the bytes answer the coordinator's pending
              next_snapshot call (object-store tier), are uploaded (durable tier), then
              acknowledged, in checkpoint order.
        """
        self._last_barrier = checkpoint_id
        for op in self._sinks():  # C3
            op.pre_commit(checkpoint_id)
            if self.faults:
                self.faults.hit("sink_pre_committed", checkpoint_id)
        state = SubtaskState(
            checkpoint_id=checkpoint_id, chain=self.spec.chain_name, subtask=self.spec.subtask,
            parallelism=self.spec.parallelism,
            source_offsets={k: p.snapshot() for k, p in self.parts.items()},
            keyed={op.step_id: op.state for op in self.ops if isinstance(op, KeyedOp)},
            sinks={op.step_id: SinkState(op.writer.snapshot(), list(op.pending)) for op in self._sinks()},
            counters=self._report().steps,
            audit=self._audit_state(),
            errors={op.step_id: op.errors for op in self.ops if op.errors},
        )
        data, sha = encode(state)  # C3: the consistent copy
        for edge in self.outputs:  # C3: the barrier goes on
            await edge.broadcast(BARRIER, checkpoint_id)
        key = CheckpointStore.snapshot_key(self.spec.run_id, checkpoint_id, self.spec.attempt,
                                           self.spec.chain_name, self.spec.subtask)
        meta = SnapshotMeta(self.spec.chain_name, self.spec.subtask, key, sha, len(data), alignment, self.source_out,
                            {k: list(v) for k, v in state.audit.items()})
        self._upload_tail = asyncio.ensure_future(self._upload(self._upload_tail, checkpoint_id, data, meta))  # C4

    async def _upload(self, previous: asyncio.Task | None, checkpoint_id: int, data: bytes, meta: SnapshotMeta) -> None:
        if previous is not None:  # acknowledgements go out in checkpoint order
            await asyncio.shield(previous)
        self._snapshots.put_nowait(data)
        error = None
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.store.storage.put, meta.key, data)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            logger.warning("%s: upload of checkpoint %d failed: %s", self.name, checkpoint_id, error)
        if self.faults and error is None:
            self.faults.hit("snapshot_uploaded", checkpoint_id)
        try:
            await self.coordinator.ack.remote(self.spec.attempt, checkpoint_id, meta, error)
        except ray.exceptions.RayError:
            pass  # the coordinator is gone; a new one restores from durable storage
