"""Recovery helpers: which snapshots each new subtask restores from, how their states
merge, and how often a job may restart.

Restoring at the same parallelism, subtask i reads the snapshot of old subtask i.
At another parallelism, it reads every snapshot of its chain and keeps the keyed
state of its own key groups and the offsets of its own source partitions. Sink writer
state is per subtask and cannot be split, so a chain with a sink restores only at the
parallelism it was checkpointed with.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from raystream._runtime.checkpoint import CheckpointStore, Manifest, SnapshotMeta, SubtaskState
from raystream._runtime.keys import groups_of_subtask, key_group
from raystream._runtime.plan import Chain
from raystream.config import RestartStrategy
from raystream.errors import JobFailedError, RaystreamError


logger = logging.getLogger(__name__)

_OBJECT_STORE_TIMEOUT = 10.0


class RestoreError(RaystreamError):
    """A checkpoint cannot be restored into this job (the graph or a sink's parallelism changed)."""


def snapshots_for(manifest: Manifest, chain: Chain, subtask: int) -> list[SnapshotMeta]:
    """The snapshots that subtask `subtask` of `chain` restores from."""
    old = manifest.snapshots_of(chain.name)
    if not old:
        stateful = [s.step_id for s in chain.steps if s.kind in ("source", "reduce", "stateful_map", "sink")]
        if stateful:
            raise RestoreError(
                f"checkpoint {manifest.checkpoint_id} has no state for steps {', '.join(stateful)}: the job graph "
                "changed since it was taken; restore with the same steps, or start without resume")
        return []
    if len(old) == chain.parallelism:
        return [old[subtask]]
    if any(s.kind == "sink" for s in chain.steps):
        raise RestoreError(
            f"chain {chain.name!r} was checkpointed at parallelism {len(old)} and cannot be restored at "
            f"{chain.parallelism}: a sink's state is per subtask; keep the sink's parallelism")
    return old


@dataclass
class RestoredState:
    """The merged state one new subtask starts from."""

    checkpoint_id: int
    source_offsets: dict[str, Any] = field(default_factory=dict)
    keyed: dict[str, dict[Any, Any]] = field(default_factory=dict)
    sink_states: dict[str, Any] = field(default_factory=dict)
    sink_txns: dict[str, list[Any]] = field(default_factory=dict)
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)
    audit: dict[str, tuple[int, int]] = field(default_factory=dict)
    tiers: dict[str, int] = field(default_factory=dict)  # snapshots read per storage tier
    errors: dict[str, int] = field(default_factory=dict)


def merge_states(states: list[SubtaskState], subtask: int, parallelism: int, max_parallelism: int) -> RestoredState:
    """Combine old snapshots into the state of new subtask `subtask` of `parallelism`."""
    merged = RestoredState(checkpoint_id=max((s.checkpoint_id for s in states), default=0))
    same_shape = len(states) == 1 and states[0].parallelism == parallelism and states[0].subtask == subtask
    mine = None if same_shape else set(groups_of_subtask(subtask, parallelism, max_parallelism))
    for state in states:
        merged.source_offsets.update(state.source_offsets)
        for step_id, table in state.keyed.items():
            target = merged.keyed.setdefault(step_id, {})
            if mine is None:
                target.update(table)
            else:
                target.update((k, v) for k, v in table.items() if key_group(k, max_parallelism) in mine)
        if same_shape:
            for step_id, sink in state.sinks.items():
                merged.sink_states[step_id] = sink.writer_state
                merged.sink_txns[step_id] = [txn for _, txn in sink.pending]
            merged.counters = dict(state.counters)
            merged.audit = dict(getattr(state, "audit", {}))  # absent in snapshots older than the audit
            merged.errors = dict(getattr(state, "errors", {}))
    return merged


async def load_state(restore: Any, store: CheckpointStore, subtask: int, parallelism: int,
                     max_parallelism: int) -> RestoredState:
    """Read each snapshot of `restore` (a RestoreSpec) from the object store if the copy is
    still there, else from durable storage; verify its checksum; merge."""
    loop = asyncio.get_running_loop()
    states = []
    tiers = {"object_store": 0, "durable": 0}
    for meta, ref in restore.snapshots:
        data = None
        if ref is not None:
            try:
                data = await asyncio.wait_for(ref, _OBJECT_STORE_TIMEOUT)
                tiers["object_store"] += 1
            except Exception as exc:  # the object died with its node: durable storage has it
                logger.info("object-store copy of %s unavailable (%s)", meta.key, type(exc).__name__)
        if data is None:
            data = await loop.run_in_executor(None, store.storage.get, meta.key)
            tiers["durable"] += 1
        states.append(await loop.run_in_executor(None, store.verify_snapshot, data, meta))
    merged = merge_states(states, subtask, parallelism, max_parallelism)
    merged.tiers = tiers
    return merged


class RestartTracker:
    """Applies a RestartStrategy: the delay before the next restart, or a final error."""

    def __init__(self, strategy: RestartStrategy):
        self.strategy = strategy
        self.times: list[float] = []
        self.total = 0
        self.streak = 0  # restarts since the last quiet period of `reset_after` seconds

    def next_delay(self, failure: str, *, made_progress: bool = False) -> float:
        """Record a restart; raise JobFailedError if the strategy allows no more.

        `made_progress`: the failed attempt completed a checkpoint, so it was no crash
        loop and the backoff starts over."""
        s = self.strategy
        now = time.monotonic()
        self.times = [t for t in self.times if now - t < s.window]
        if s.kind == "none" or len(self.times) >= s.max_restarts:
            raise JobFailedError(
                f"giving up after {len(self.times)} restarts within {s.window:.0f}s "
                f"(RestartStrategy max_restarts={s.max_restarts}); last failure: {failure}")
        if made_progress or (self.times and now - self.times[-1] >= s.reset_after):
            self.streak = 0
        delay = s.delay if s.kind == "fixed_delay" else min(s.max_delay, s.delay * s.multiplier ** self.streak)
        self.streak += 1
        self.times.append(now)
        self.total += 1
        return delay
