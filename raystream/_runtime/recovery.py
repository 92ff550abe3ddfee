"""Recovery helpers: which snapshots each new subtask restores from, how their states
merge, and how often a job may restart.

Restoring at the same parallelism, subtask i reads the snapshot of old subtask i.
At another parallelism, it reads every snapshot of its chain and keeps the keyed
state of its own key groups. Sink writer state is per subtask and cannot be split, so
a chain with a sink (or a dead-letter writer) restores only at the parallelism it was
checkpointed with.

Source offsets belong to partitions, not to subtasks: a source subtask reads every
snapshot of its chain and continues each partition it is assigned now from the offset
found in any of them, wherever that partition was read before. A partition no
snapshot mentions is new and starts at its beginning.

Counters and audit tallies are sums: after a rescale, subtask 0 carries the sums of
all old subtasks and the others start at zero, so totals stay right.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from raystream._runtime.checkpoint_store import CheckpointStore
from raystream._runtime.keys import groups_of_subtask, key_group
from raystream._runtime.manifest import Manifest, incompatibility
from raystream._runtime.plan import Chain
from raystream._runtime.snapshot import SnapshotMeta, SubtaskState
from raystream._runtime.tally import add_digests
from raystream.config import RestartKind, RestartStrategy
from raystream.errors import CorruptCheckpointError, JobFailedError, RestoreError
from raystream.graph import StepKind


logger = logging.getLogger(__name__)

_OBJECT_STORE_TIMEOUT = 10.0


def choose_checkpoint(store: CheckpointStore, run_id: str, refused: set[int], *,
                      max_parallelism: int, keyed: bool) -> Manifest | None:
    """R3 (docs/protocol.md): the newest checkpoint of the run to restore.

    Called only after this attempt's claim, so every manifest an older attempt could
    still publish is void from here on (CheckpointStore). A manifest that is void, or
    that was refused before, is skipped; one that fails to verify is refused, durably,
    and skipped. Returns None when the run has no checkpoint; raises RestoreError when
    it has some but none can be restored (starting over would repeat committed output),
    or when the newest one was taken with other versions or another max_parallelism.
    `refused` is updated with what is refused now."""
    ids = store.manifest_ids(run_id)
    points = store.restore_points(run_id)
    refused.update(store.refused(run_id))
    for checkpoint_id in reversed(ids):
        if checkpoint_id in refused:
            continue
        try:
            manifest = store.load_manifest(run_id, checkpoint_id)
        except CorruptCheckpointError as exc:
            logger.error("checkpoint %d refused: %s", checkpoint_id, exc)
            store.refuse(run_id, checkpoint_id, str(exc))
            refused.add(checkpoint_id)
            continue
        if store.is_void(manifest, points):
            logger.info("checkpoint %d of attempt %d is void: a later attempt restored an older one",
                        checkpoint_id, manifest.attempt)
            continue
        problem = incompatibility(manifest.versions)
        if problem is not None:
            raise RestoreError(f"checkpoint {checkpoint_id} of run {run_id} cannot be restored: {problem}")
        if keyed and manifest.max_parallelism and manifest.max_parallelism != max_parallelism:
            raise RestoreError(
                f"checkpoint {checkpoint_id} of run {run_id} keeps keyed state in {manifest.max_parallelism} key "
                f"groups, and this job has RuntimeConfig(max_parallelism={max_parallelism}); keyed state cannot "
                f"move between key-group counts: set max_parallelism={manifest.max_parallelism}, or start "
                "without resume")
        return manifest
    if refused & set(ids):
        raise RestoreError(
            f"no checkpoint of run {run_id} can be restored (refused: {sorted(refused & set(ids))}); starting "
            "over would repeat output that is already committed. Inspect the checkpoint storage, or start a "
            "new run without resume")
    return None


async def begin_attempt(store: CheckpointStore, run_id: str, refused: set[int], *, restoring: bool,
                        max_parallelism: int, keyed: bool,
                        blocking: Callable[..., Awaitable[Any]]) -> tuple[int, Manifest | None]:
    """R3, in this order: claim the next attempt number (from now on every
    manifest an older attempt publishes late is void), choose the checkpoint to restore
    (`restoring`: after a failure or on resume), and record the choice durably before
    any subtask of the attempt touches a sink. Returns (attempt, manifest or None)."""
    attempt = await blocking(store.claim_attempt, run_id)
    manifest = None
    if restoring:
        manifest = await blocking(lambda: choose_checkpoint(store, run_id, refused, max_parallelism=max_parallelism,
                                                            keyed=keyed))
    await blocking(store.record_restore, run_id, attempt, manifest.checkpoint_id if manifest else 0)
    return attempt, manifest


def snapshots_for(manifest: Manifest, chain: Chain, subtask: int, *, dead_letters: bool = False) -> list[SnapshotMeta]:
    """The snapshots that subtask `subtask` of `chain` restores from. `dead_letters`: the
    chain holds a dead-letter writer, which is per subtask like a sink's."""
    old = manifest.snapshots_of(chain.name)
    if not old:
        stateful = [s.step_id for s in chain.steps if s.kind.stateful]
        if stateful:
            raise RestoreError(
                f"checkpoint {manifest.checkpoint_id} has no state for steps {', '.join(stateful)}: the job graph "
                "changed since it was taken; restore with the same steps, or start without resume")
        return []
    if len(old) == chain.parallelism:
        if chain.head.kind is StepKind.SOURCE:  # offsets of partitions that other subtasks read before
            return [old[subtask]] + [m for m in old if m.subtask != subtask]
        return [old[subtask]]
    has_sink = any(s.kind is StepKind.SINK for s in chain.steps)
    if has_sink or dead_letters:
        what = "a sink's" if has_sink else "a dead-letter writer's"
        raise RestoreError(
            f"chain {chain.name!r} was checkpointed at parallelism {len(old)} and cannot be restored at "
            f"{chain.parallelism}: {what} state is per subtask; keep the parallelism of {chain.name!r}")
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
    """Combine old snapshots into the state of new subtask `subtask` of `parallelism`.

    `states` holds this subtask's own old snapshot first when the parallelism is
    unchanged (the others then only lend source offsets), or every old snapshot of the
    chain after a rescale."""
    merged = RestoredState(checkpoint_id=max((s.checkpoint_id for s in states), default=0))
    own = states[0] if states and states[0].parallelism == parallelism and states[0].subtask == subtask else None
    for state in states:
        merged.source_offsets.update(state.source_offsets)
    if own is not None:  # the same shape: this subtask's state, whole
        merged.keyed = {step_id: dict(table) for step_id, table in own.keyed.items()}
        for step_id, sink in own.sinks.items():
            merged.sink_states[step_id] = sink.writer_state
            merged.sink_txns[step_id] = [txn for _, txn in sink.pending]
        merged.counters = dict(own.counters)
        merged.audit = dict(getattr(own, "audit", {}))  # absent in snapshots older than the audit
        merged.errors = dict(getattr(own, "errors", {}))
        return merged
    mine = set(groups_of_subtask(subtask, parallelism, max_parallelism))
    for state in states:
        for step_id, table in state.keyed.items():
            target = merged.keyed.setdefault(step_id, {})
            target.update((k, v) for k, v in table.items() if key_group(k, max_parallelism) in mine)
        if subtask == 0:  # sums of every old subtask, carried once
            for step_id, (n_in, n_out) in state.counters.items():
                c_in, c_out = merged.counters.get(step_id, (0, 0))
                merged.counters[step_id] = (c_in + n_in, c_out + n_out)
            for name, (count, digest) in getattr(state, "audit", {}).items():
                c, d = merged.audit.get(name, (0, 0))
                merged.audit[name] = (c + count, add_digests(d, digest))
            for step_id, n in getattr(state, "errors", {}).items():
                merged.errors[step_id] = merged.errors.get(step_id, 0) + n
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
        if s.kind is RestartKind.NONE or len(self.times) >= s.max_restarts:
            raise JobFailedError(
                f"giving up after {len(self.times)} restarts within {s.window:.0f}s "
                f"(RestartStrategy max_restarts={s.max_restarts}); last failure: {failure}")
        if made_progress or (self.times and now - self.times[-1] >= s.reset_after):
            self.streak = 0
        delay = s.delay if s.kind is RestartKind.FIXED_DELAY else min(s.max_delay, s.delay * s.multiplier ** self.streak)
        self.streak += 1
        self.times.append(now)
        self.total += 1
        return delay
