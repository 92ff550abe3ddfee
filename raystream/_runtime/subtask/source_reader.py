"""The partitions one source subtask reads. `SourceReader` is a part of SubtaskActor;
it holds no Ray handle.

Offsets belong to partitions, not to subtasks (docs/protocol.md, S3): each partition
assigned to this subtask continues from its offset in the restored checkpoint, wherever
it was read before; a partition the restored checkpoint does not know appeared since the
job first started and is read from its beginning (`Source.build_new_partition`); the
offsets of partitions that are gone now are carried in every checkpoint, by subtask 0, so
a partition that returns continues where it was.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable

from raystream._runtime.checkpointing.rescale import RestoredState
from raystream._runtime.transport.batch import batch_len
from raystream.config import RuntimeConfig
from raystream.errors import SourceError
from raystream.graph import Step
from raystream.source_api import SourcePartition

logger = logging.getLogger(__name__)

#: emit(partition key, offset before the batch, offset after it, batch)
Emit = Callable[[str, Any, Any, Any], Awaitable[None]]
#: between() after each batch: True ends the round (the final barrier is out, or a stop came)
Between = Callable[[], Awaitable[bool]]

_IDLE_POLL = 0.05  # seconds between polls of partitions that have no data yet


def source_batch_size(step: Step, runtime: RuntimeConfig) -> int:
    """Records (rows, for a source of Arrow batches) a partition reads at a time."""
    return runtime.arrow_batch_size if step.source.columnar else runtime.batch_size


class SourceReader:
    def __init__(self, step: Step, assigned: list[str], batch_size: int):
        self.step = step
        self.assigned = assigned
        self.batch_size = batch_size
        self.parts: dict[str, SourcePartition] = {}  # every opened partition: their offsets are checkpointed
        self.active: list[tuple[str, SourcePartition]] = []  # those not exhausted
        self.ended: list[str] = []  # partitions read to their end
        self.empty: list[str] = []  # partitions the last round found without data
        self.emitted = 0  # records emitted since the run began (restored from the checkpoint)
        self.carried: dict[str, Any] = {}  # offsets of partitions that are gone now (B3)
        self._pending: dict[int, dict[str, Any]] = {}  # offsets of checkpoints not yet complete

    def open(self, offsets: dict[str, Any], emitted: int = 0, *, restored: bool = False,
             all_partitions: list[str] | None = None) -> None:
        """Open the assigned partitions at their offsets. `restored`: the offsets are a
        checkpoint's for this source, so a partition without one is new since the job
        first started. `all_partitions`: every partition of the source now, given to
        subtask 0 only, which logs what changed and carries the offsets of those gone."""
        self.emitted = emitted
        if all_partitions is not None and offsets:
            self._log_changes(offsets, all_partitions)
            present = set(all_partitions)
            self.carried = {k: v for k, v in offsets.items() if k not in present}
        source = self.step.source
        try:
            for key in self.assigned:
                if key in offsets or not restored:
                    self.parts[key] = source.build_partition(key, offsets.get(key), self.batch_size)
                else:
                    self.parts[key] = source.build_new_partition(key, self.batch_size)
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"source {self.step.step_id!r} could not open a partition: {exc}") from exc
        finally:
            self.active = list(self.parts.items())

    def open_from(self, state: RestoredState | None, progress: dict[str, Any] | None,
                  all_partitions: list[str] | None) -> None:
        """R4: open at the restored checkpoint's offsets, overridden by `progress` (at-most-once:
        the offsets saved before the last batches)."""
        offsets = {**(state.source_offsets if state else {}), **(progress or {})}
        emitted = state.counters.get(self.step.step_id, (0, 0))[1] if state else 0
        self.open(offsets, emitted, restored=state is not None and state.source_restored,
                  all_partitions=all_partitions)

    def _log_changes(self, offsets: dict[str, Any], all_partitions: list[str]) -> None:
        new = [p for p in all_partitions if p not in offsets]
        gone = sorted(set(offsets) - set(all_partitions))
        if new:
            logger.info("source %s: %d new partitions start at their beginning: %s", self.step.step_id, len(new),
                        _first(new))
        if gone:
            logger.warning("source %s: %d partitions of the checkpoint are gone and are not read; their offsets are "
                           "kept for when they return: %s", self.step.step_id, len(gone), _first(gone))

    def offsets(self) -> dict[str, Any]:
        """Every partition's offset for a checkpoint: those read here, and those carried."""
        return {**self.carried, **{key: part.snapshot() for key, part in self.parts.items()}}

    def snapshot(self, checkpoint_id: int) -> dict[str, Any]:
        """`offsets()` for checkpoint `checkpoint_id` (C3), kept until it completes."""
        self._pending[checkpoint_id] = offsets = self.offsets()
        return offsets

    def completed(self, checkpoint_id: int) -> None:
        """C6: tell the partitions the offsets of the newest complete checkpoint (Kafka
        reports its lag from them)."""
        done = [c for c in self._pending if c <= checkpoint_id]
        if done:
            self.checkpoint_complete(self._pending[max(done)])
            for c in done:
                del self._pending[c]

    def checkpoint_complete(self, offsets: dict[str, Any]) -> None:
        """Tell each open partition the offset a completed checkpoint holds for it."""
        for key, part in self.parts.items():
            if key in offsets:
                part.checkpoint_complete(offsets[key])

    @property
    def exhausted(self) -> bool:
        return not self.active

    def stop(self) -> None:
        """Read nothing more (the job is being stopped)."""
        self.active = []

    async def read_round(self, emit: Emit, between: Between | None = None) -> bool:
        """One batch from each active partition in turn; False when none had data.
        `empty` is left holding the partitions this round found without data. After each
        batch, `between()` may emit barriers (C1: after the current batch, not the round);
        when it returns True (the final barrier is out, or the source is being stopped),
        the round ends there."""
        progressed = False
        self.empty = []
        for key, part in list(self.active):
            before = part.snapshot()
            batch = part.next_batch()
            if batch is None:
                part.close()
                self.active.remove((key, part))
                self.ended.append(key)
            elif not batch_len(batch):
                self.empty.append(key)
            else:
                progressed = True
                self.emitted += batch_len(batch)
                await emit(key, before, part.snapshot(), batch)
                if between is not None and await between():
                    break
        return progressed

    def idle_timeout(self) -> float:
        """Seconds until a partition without data may have some."""
        wake = [w for w in (p.next_awake() for _, p in self.active) if w is not None]
        return min([_IDLE_POLL] + [w - time.time() for w in wake])


def _first(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (" ..." if len(keys) > n else "")
