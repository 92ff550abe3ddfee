"""Recovery helpers: which checkpoint an attempt restores, reading and merging its
snapshots (rescale.py says which snapshots a subtask reads and how they merge), and how
often a job may restart.

A run started from a savepoint or a retained checkpoint of another run (`--from`)
records that checkpoint as its origin; until the run completes a checkpoint of its own,
every attempt restores the origin, and from then on never again (R5).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from raystream._runtime.checkpointing.origin import holds
from raystream._runtime.state.changelog import materialize
from raystream._runtime.state.fence import MAX_CHECKPOINT_ID
from raystream._runtime.state.store import CheckpointStore
from raystream._runtime.state.manifest import Manifest, incompatibility
from raystream._runtime.checkpointing.rescale import RestoredState, merge_states
from raystream._runtime.state.snapshot import PartRef, SnapshotMeta, SubtaskState
from raystream.config import RestartKind, RestartStrategy
from raystream.errors import CorruptCheckpointError, JobFailedError, RestoreError
from raystream.graph import Step


logger = logging.getLogger(__name__)

_OBJECT_STORE_TIMEOUT = 10.0


def check_restorable(manifest: Manifest, *, max_parallelism: int, keyed: bool) -> None:
    """Raise RestoreError if `manifest` was taken with other versions or key groups."""
    where = f"checkpoint {manifest.checkpoint_id} of run {manifest.run_id}"
    problem = incompatibility(manifest.versions)
    if problem is not None:
        raise RestoreError(f"{where} cannot be restored: {problem}")
    if keyed and manifest.max_parallelism and manifest.max_parallelism != max_parallelism:
        raise RestoreError(
            f"{where} keeps keyed state in {manifest.max_parallelism} key groups, and this job has "
            f"RuntimeConfig(max_parallelism={max_parallelism}); keyed state cannot move between key-group "
            f"counts: set max_parallelism={manifest.max_parallelism}, or start without it")


def choose_checkpoint(store: CheckpointStore, run_id: str, refused: set[int], *,
                      max_parallelism: int, keyed: bool) -> Manifest | None:
    """R3 (docs/protocol.md): the newest checkpoint of the run to restore.

    Called only after this attempt's claim, so every manifest an older attempt could
    still publish is void from here on (CheckpointStore). A manifest that is void, or
    that was refused before, is skipped; one that fails to verify is refused, durably,
    and skipped. The run's origin (the checkpoint it was started from) is chosen only
    while the run has no checkpoint of its own that counts (void ones never did).
    Returns None when there is nothing to restore; raises RestoreError when the run has
    checkpoints but none can be restored (R5: starting over, or rewinding to the origin,
    would repeat committed output), when the origin is gone or refused, or when the chosen
    one was taken with other versions or another max_parallelism. `refused` is updated
    with what is refused now."""
    ids = store.manifest_ids(run_id)
    points = store.restore_points(run_id)
    refused.update(store.refused(run_id))
    own = []  # the run's checkpoints that count: not void (refused ones counted: their output was committed)
    for checkpoint_id in reversed(ids):
        if checkpoint_id in refused:
            own.append(checkpoint_id)
            continue
        try:
            manifest = store.load_manifest(run_id, checkpoint_id)
        except CorruptCheckpointError as exc:
            logger.error("checkpoint %d refused: %s", checkpoint_id, exc)
            store.refuse(run_id, checkpoint_id, str(exc))
            refused.add(checkpoint_id)
            own.append(checkpoint_id)
            continue
        if store.is_void(manifest, points):
            logger.info("checkpoint %d of attempt %d is void: a later attempt restored an older one",
                        checkpoint_id, manifest.attempt)
            continue
        check_restorable(manifest, max_parallelism=max_parallelism, keyed=keyed)
        _check_holds(store, run_id, manifest.checkpoint_id, refused)
        return manifest
    if own:
        raise RestoreError(
            f"no checkpoint of run {run_id} can be restored (refused: {sorted(own)}); starting over, or from the "
            "checkpoint the run started from, would repeat output that is already committed. See why with "
            f"`raystream checkpoints ls`, or start a new run without resume")
    origin = store.origin(run_id)
    gone = {attempt: point for attempt, point in points.items()
            if 0 < point < MAX_CHECKPOINT_ID and (origin is None or point != origin.checkpoint_id)}
    if gone:  # a checkpoint of its own was restored, so its output is committed: never start before it
        attempt, point = max(gone.items())
        raise RestoreError(
            f"checkpoint {point} of run {run_id}, which its attempt {attempt} restored, is gone, and no checkpoint of "
            "the run that counts is left; starting over, or from the checkpoint the run started from, would repeat "
            "output that is already committed. Start a new run without resume")
    if origin is not None:
        if origin.checkpoint_id in refused:
            raise RestoreError(
                f"checkpoint {origin.checkpoint_id} of run {origin.run_id}, which run {run_id} started from, was "
                f"refused ({store.refusal(run_id, origin.checkpoint_id)}); start from another checkpoint")
        check_restorable(origin, max_parallelism=max_parallelism, keyed=keyed)
        return origin
    return None


def _check_holds(store: CheckpointStore, run_id: str, chosen: int, refused: set[int]) -> None:
    """R5: a fall-back never goes past a checkpoint another run started from (B5): its
    recover would retract output that run builds on."""
    past = {run: held for run, held in holds(store, run_id).items() if held > chosen}
    if past:
        run, held = min(past.items(), key=lambda item: item[1])
        raise RestoreError(
            f"run {run_id} cannot fall back to checkpoint {chosen}: checkpoint {held}, refused "
            f"({store.refusal(run_id, held) if held in refused else 'void'}), is where run {run} started "
            f"from, and going back past it would retract output run {run} builds on. Start a new run from a "
            f"checkpoint of run {run}, or, if run {run} is not needed, delete {store.storage.uri(f'{run_id}/held/{run}')} "
            "and resume")


async def begin_attempt(store: CheckpointStore, run_id: str, refused: set[int], *, restoring: bool,
                        max_parallelism: int, keyed: bool,
                        blocking: Callable[..., Awaitable[Any]]) -> tuple[int, Manifest | None]:
    """R3, in this order: claim the next attempt number (from now on every
    manifest an older attempt publishes late is void), choose the checkpoint to restore
    (`restoring`: after a failure or on resume), and record the choice durably before
    any subtask of the attempt touches a sink. Returns (attempt, manifest or None).

    An attempt that cannot choose records that it voids nothing, and a recorded attempt
    closes older ones that never recorded (they died in between), so that starts from
    this run's checkpoints need not wait for them (B5); an attempt closed meanwhile
    claims again, having touched no sink."""
    for _ in range(_CLAIMS):
        attempt = await blocking(store.claim_attempt, run_id)
        try:
            manifest = await _choose(store, run_id, refused, restoring, max_parallelism, keyed, blocking)
        except Exception as exc:
            try:
                await blocking(store.record_restore, run_id, attempt, 0, f"it could not restore: {exc}"[:300])
            except Exception:  # noqa: BLE001 - the error that ends the attempt is the one to report
                logger.warning("attempt %d of run %s could not record that it voids nothing", attempt, run_id)
            raise
        if await blocking(store.record_restore, run_id, attempt, manifest.checkpoint_id if manifest else 0):
            for older in await blocking(store.unrecorded, run_id, attempt):  # they died before they recorded
                await blocking(store.record_restore, run_id, older, 0, f"closed by attempt {attempt}")
            return attempt, manifest
        logger.warning("attempt %d of run %s was closed by a newer attempt before it recorded its restore; "
                       "claiming the next", attempt, run_id)
    raise RestoreError(f"{_CLAIMS} attempts of run {run_id} in a row were closed by newer ones before they recorded "
                       "their restore: more than one process is recovering this run; stop all but one")


_CLAIMS = 5  # attempts in a row that newer ones may close before this one gives up


async def _choose(store: CheckpointStore, run_id: str, refused: set[int], restoring: bool, max_parallelism: int,
                  keyed: bool, blocking: Callable[..., Awaitable[Any]]) -> Manifest | None:
    ids = await blocking(store.manifest_ids, run_id)
    if ids and max(ids) >= MAX_CHECKPOINT_ID:  # the next checkpoint id would not fit its name
        raise RestoreError(f"run {run_id} under {store.root} holds manifest {max(ids)}, an id raystream never "
                           "reaches: someone who can write the storage put it there. Remove it, then resume")
    if not restoring:
        return None
    return await blocking(lambda: choose_checkpoint(store, run_id, refused, max_parallelism=max_parallelism,
                                                    keyed=keyed))


def read_progress(store: CheckpointStore, run_id: str, source_steps: list[str], attempt: int) -> dict[str, dict[str, Any]]:
    """At-most-once: the offsets each source saved before its last batches (they win over
    the checkpoint's), carried into `attempt`'s keys. source step id -> partition -> offset."""
    progress = {}
    for step_id in source_steps:
        offsets = store.progress.read(run_id, step_id)
        store.progress.carry(run_id, step_id, attempt, offsets)
        progress[step_id] = offsets
    return progress


async def load_state(restore: Any, store: CheckpointStore, steps: list[Step], subtask: int, parallelism: int,
                     max_parallelism: int) -> RestoredState:
    """Read each snapshot of `restore` (a RestoreSpec) from the object store if the copy is
    still there, else from durable storage (the run's, or the storage of the checkpoint a
    new run started from); verify its checksum; merge (rescale.merge_states)."""
    loop = asyncio.get_running_loop()
    same_root = restore.root == store.root
    if not same_root:
        store = CheckpointStore(restore.root)
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
            data = await loop.run_in_executor(None, store.read_snapshot, meta)
            tiers["durable"] += 1
        states.append(await loop.run_in_executor(None, store.verify_snapshot, data, meta))
    parts = continued_parts(states, [meta for meta, _ in restore.snapshots], same_root, steps, subtask, parallelism)
    for state in states:  # changes over earlier parts: read them (changelog.py, I5)
        await loop.run_in_executor(None, materialize, store.storage, state)
    merged = merge_states(states, steps, subtask, parallelism, max_parallelism)
    merged.tiers = tiers
    merged.parts = parts
    return merged


def continued_parts(states: list[SubtaskState], metas: list[SnapshotMeta], same_root: bool, steps: list[Step],
                    subtask: int, parallelism: int) -> list[PartRef] | None:
    """I5: the parts a subtask's next snapshot may build on: those of exactly its own
    snapshot (the same subtask, parallelism and chain, under this checkpoint root), that
    snapshot last; None when it restores from anything else (its next snapshot is full)."""
    if len(states) != 1 or not same_root:
        return None
    only, meta = states[0], metas[0]
    if (only.subtask, only.parallelism, only.chain) != (subtask, parallelism, "+".join(s.step_id for s in steps)):
        return None
    return only.parts + [PartRef(meta.key, meta.sha256, meta.size, only.checkpoint_id, not only.changelog)]


class RestartTracker:
    """Applies a RestartStrategy: the delay before the next restart, or a final error."""

    def __init__(self, strategy: RestartStrategy):
        self.strategy = strategy
        self.times: list[float] = []
        self.total = 0
        self.streak = 0  # restarts since the last quiet period of `reset_after` seconds

    def next_delay(self, failure: str) -> float:
        """Record a restart; raise JobFailedError if the strategy allows no more.

        The backoff starts over after `reset_after` seconds without a failure, not when
        the failed attempt completed a checkpoint: an attempt after a failure checkpoints
        0.1 s after it starts (C1), so a crash loop completes one in every attempt."""
        s = self.strategy
        now = time.monotonic()
        self.times = [t for t in self.times if now - t < s.window]
        if s.kind is RestartKind.NONE or len(self.times) >= s.max_restarts:
            raise JobFailedError(
                f"giving up after {len(self.times)} restarts within {s.window:.0f}s "
                f"(RestartStrategy max_restarts={s.max_restarts}); last failure: {failure}")
        if self.times and now - self.times[-1] >= s.reset_after:
            self.streak = 0
        if s.kind is RestartKind.FIXED_DELAY:
            delay = s.delay
        elif self.streak == 0:  # a failure after a quiet run: restart at once (a crash loop backs off)
            delay = 0.0
        else:
            delay = min(s.max_delay, s.delay * s.multiplier ** (self.streak - 1))
        self.streak += 1
        self.times.append(now)
        self.total += 1
        return delay
