"""Fault injection for tests: make a subtask or the coordinator exit hard (`os._exit`)
at a named point of the checkpoint and recovery protocols.

    job = rs.Job(..., runtime=rs.RuntimeConfig(faults=(
        rs.faults.CrashAt("sink_pre_committed", step="totals", subtask=0, checkpoint=3),
        rs.faults.CrashAt("restore", attempt=2),  # and once more while recovering
    )))

Without a plan the points cost one attribute check each, per protocol step, never per
record. Each CrashAt fires on one attempt only (`attempt`, default 1): the processes of
the next attempt are new, and so is its attempt number.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from raystream.errors import ConfigError

logger = logging.getLogger(__name__)

#: Subtask points.
SUBTASK_POINTS = {
    "mid_alignment": "a barrier has arrived on some inputs of a step with several, not on all",
    "batch_before_barrier": "a source emitted a batch while a barrier was due, not yet the barrier",
    "sink_pre_committed": "a sink pre-committed its transaction; the checkpoint is not complete",
    "snapshot_uploaded": "the snapshot is in durable storage; not yet acknowledged",
    "sink_committed": "a sink committed a transaction of a complete checkpoint",
    "restore": "a new subtask read its snapshot; sinks have not recovered yet",
}
#: Coordinator points.
COORDINATOR_POINTS = {
    "acks_complete": "every acknowledgement is in; the manifest is not written",
    "manifest_writing": "the manifest bytes are written; not yet published under their key",
    "manifest_written": "the manifest is committed; no subtask has been told",
}
EXIT_CODE = 97


@dataclass(frozen=True)
class CrashAt:
    """Crash at `point` on attempt `attempt`, at checkpoint `checkpoint` or later.

    Subtask points take `step` (a step id in the subtask's chain; None: any) and
    `subtask` (None: any).
    """

    point: str
    step: str | None = None
    subtask: int | None = None
    checkpoint: int = 2
    attempt: int = 1

    def __post_init__(self) -> None:
        if self.point not in SUBTASK_POINTS and self.point not in COORDINATOR_POINTS:
            known = ", ".join(sorted(SUBTASK_POINTS) + sorted(COORDINATOR_POINTS))
            raise ConfigError(f"unknown crash point {self.point!r}; known points: {known}")


class Injector:
    """The crash points that apply to one process of one attempt."""

    def __init__(self, plan: tuple[CrashAt, ...], *, attempt: int, steps: tuple[str, ...] = (),
                 subtask: int | None = None, coordinator: bool = False):
        points = COORDINATOR_POINTS if coordinator else SUBTASK_POINTS
        self._plan = [c for c in plan if c.point in points and c.attempt == attempt
                      and (coordinator or ((c.step is None or c.step in steps)
                                           and (c.subtask is None or c.subtask == subtask)))]
        self._where = "coordinator" if coordinator else f"{'+'.join(steps)}[{subtask}]"

    def __bool__(self) -> bool:
        return bool(self._plan)

    def hit(self, point: str, checkpoint: int) -> None:
        for c in self._plan:
            if c.point == point and checkpoint >= c.checkpoint:
                logger.warning("fault injection: %s exits at %s (checkpoint %d)", self._where, point, checkpoint)
                os._exit(EXIT_CODE)
