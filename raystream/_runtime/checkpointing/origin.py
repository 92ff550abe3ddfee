"""A checkpoint taken by another run as its origin, seen from the run it belongs to (B5).

That run may still be going on, and recovering: the checkpoint is taken only once no
attempt of its run can void it any more (settled), and it is held there, so that the
run's own fall-back past it (R5) stops instead of retracting output the other run
builds on. Holds are signed records under `<run>/held/<other run>`.
"""
from __future__ import annotations

import logging
import re
import time

from raystream._runtime.checkpointing.locate import locate
from raystream._runtime.state import signing
from raystream._runtime.state.store import CheckpointRef, CheckpointStore
from raystream.errors import CheckpointKeyError, CorruptCheckpointError, RestoreError, StorageKeyError

logger = logging.getLogger(__name__)

#: How long a run started from a checkpoint waits for it to settle.
SETTLE_TIMEOUT = 30.0
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def locate_origin(uri: str, timeout: float = SETTLE_TIMEOUT) -> CheckpointRef:
    """B5: the checkpoint `uri` names, once it is settled. A checkpoint of a run that is
    recovering may still become void (F2): waits for that run's newer attempts to record
    what they restore, and names the checkpoint again when one voided it (a run's newest
    that counts may then be another). RestoreError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        ref = locate(uri)
        waiting = settle(CheckpointStore(ref.root), ref)
        if waiting == []:
            return ref
        if waiting is not None:
            if time.monotonic() >= deadline:
                raise RestoreError(
                    f"checkpoint {ref.checkpoint_id} of run {ref.run_id} is not settled: attempt {waiting[0]} of that "
                    "run has begun to recover but has not recorded which checkpoint it restores, and if it takes an "
                    f"older one, this one becomes void (docs/protocol.md, B5). Waited {timeout:.0f} s. If run "
                    f"{ref.run_id} is recovering, try again in a moment; if its attempt died, resuming that run once "
                    "(--resume) records it as voiding nothing; or start from another checkpoint")
            logger.info("checkpoint %d of run %s waits for attempt %d of its run to record its restore (B5)",
                        ref.checkpoint_id, ref.run_id, waiting[0])
            time.sleep(0.2)


def settle(store: CheckpointStore, ref: CheckpointRef) -> list[int] | None:
    """One look at whether the checkpoint is settled: the attempts of its run, claimed
    after the one that wrote it, that have not recorded their restore (R3), any of which
    may still void it (F2); [] when none. None when it is void or gone: name it again.
    Void and settled are judged from one read of the records (an attempt claimed after
    the manifest landed lists it, so only those read can void it)."""
    try:
        manifest = store.load_manifest(ref.run_id, ref.checkpoint_id)
    except (FileNotFoundError, CorruptCheckpointError):
        return None
    points = store.restore_points(ref.run_id)
    if store.is_void(manifest, points):
        return None
    return [attempt for attempt in store.claimed_after(ref.run_id, manifest.attempt) if attempt not in points]


def hold(store: CheckpointStore, origin: CheckpointRef, run_id: str) -> None:
    """B5: record in the origin's run that `run_id` starts from it; then check that it was
    not refused meanwhile (that run writes a refusal before it reads holds: one of the two
    sees the other). A hold that cannot be written stops the start, unless the origin is
    the final checkpoint of a stopped run (a savepoint), which only a resume could fall
    back past. Undo it with `release` if the start fails after this."""
    key = f"{origin.run_id}/held/{run_id}"
    if signing.unsigned():
        logger.warning("run %s starts from %s with unsigned checkpoints accepted: if that run's checkpoints are "
                       "signed with another key, it will not see this run's hold and may fall back past it",
                       run_id, origin.uri)
    try:
        store.write_record(key, {"type": "hold", "key": key, "job": store.job, "run": origin.run_id, "by": run_id,
                                 "checkpoint": origin.checkpoint_id})
    except OSError as exc:
        if store.load_manifest(origin.run_id, origin.checkpoint_id).final:
            logger.warning("could not hold savepoint %s for run %s (%s); starting anyway", origin.uri, run_id, exc)
            return
        raise RestoreError(f"run {run_id} cannot hold checkpoint {origin.checkpoint_id} of run {origin.run_id}, which "
                           f"it starts from ({exc}): a start from a checkpoint of a run that may go on writes a record "
                           f"there ({store.storage.uri(key)}), so it needs write access to that storage; or start from "
                           "a savepoint") from None
    if origin.checkpoint_id in store.refused(origin.run_id):
        release(store, origin, run_id)
        raise RestoreError(f"checkpoint {origin.checkpoint_id} of run {origin.run_id} was refused "
                           f"({store.refusal(origin.run_id, origin.checkpoint_id)}); start from another checkpoint")


def release(store: CheckpointStore, origin: CheckpointRef, run_id: str) -> None:
    """Remove the hold of a start that failed before its run began."""
    try:
        store.storage.delete([f"{origin.run_id}/held/{run_id}"])
    except OSError as exc:
        logger.warning("could not remove the hold of run %s on %s: %s", run_id, origin.uri, exc)


def holds(store: CheckpointStore, run_id: str) -> dict[str, int]:
    """Other run -> the checkpoint of `run_id` it started from. A hold that does not
    verify is skipped: it can only stop a fall-back, and a planted one must not."""
    found = {}
    prefix = f"{run_id}/held/"
    for key in store.storage.list(prefix):
        name = key[len(prefix):]
        if not _RUN_NAME.fullmatch(name):
            continue
        try:
            body = store.read_record(key, "hold")
        except (FileNotFoundError, CorruptCheckpointError, CheckpointKeyError, StorageKeyError) as exc:
            logger.warning("hold %s ignored: %s", store.storage.uri(key), exc)
            continue
        checkpoint = body.get("checkpoint")
        if (body.get("run"), body.get("by"), body.get("job")) == (run_id, name, store.job) \
                and isinstance(checkpoint, int) and not isinstance(checkpoint, bool) and checkpoint > 0:
            found[name] = checkpoint
    return found
