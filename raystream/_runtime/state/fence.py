"""The fence (R3, docs/protocol.md): a run's attempt claims, the restore record each
attempt writes before it touches a sink, and the refusals of checkpoints that failed
verification. A fencing record that does not verify fences nothing: a planted
`restores/` or `refused/` record cannot rewind or stop a job."""
from __future__ import annotations

import logging
import time
from typing import Any

from raystream._runtime.state import signing
from raystream._runtime.state.manifest import Manifest
from raystream._runtime.state.records import SignedRecords, is_count
from raystream._runtime.state.signing import signed_json
from raystream._storage import Storage
from raystream.errors import CorruptCheckpointError, RestoreError, StorageKeyError

logger = logging.getLogger(__name__)

#: Past these, the next number would not fit its name's width: a manifest or claim near
#: them was planted (a checkpoint a second for 30,000 years; 100,000 restarts).
MAX_CHECKPOINT_ID = 10**12 - 1
MAX_ATTEMPT = 100_000


class Fence(SignedRecords):
    """Attempt claims, restore records and refusals of one job's runs."""

    def __init__(self, root: str, storage: Storage | None = None):
        super().__init__(root, storage)
        self._claims: dict[str, bool] = {}  # a claim is never rewritten: what one read showed is kept
        self._restores: dict[str, int] = {}  # nor is a restore record that verified (retention reads them often)

    # --- attempts -----------------------------------------------------------------------

    def claim_attempt(self, run_id: str) -> int:
        """F1: a number no other attempt of this run has had (a fencing token for later checks).
        A claim is a signed record: one planted without the key only uses up a number."""
        tried = 0
        for _ in range(1000):
            attempt = max(self._numbered(f"{run_id}/attempts/", 6), default=0) + 1
            attempt = max(attempt, tried + 1)  # a key taken by something no listing shows is not tried twice
            if attempt >= MAX_ATTEMPT:
                break
            key = f"{run_id}/attempts/{attempt:06d}"
            body = {"type": "attempt", "key": key, "job": self.job, "run": run_id, "attempt": attempt,
                    "time": time.time()}
            try:
                if self.storage.put_if_absent(key, signed_json(body, self._key)):
                    self._claims[key] = True
                    return attempt
            except StorageKeyError as exc:  # a link planted there
                logger.warning("attempt %d of run %s skipped: %s", attempt, run_id, exc)
            tried = attempt
        raise RestoreError(f"run {run_id} under {self.root} has used up its attempt numbers; start a new run "
                           "(from a savepoint or retained checkpoint, --from)")

    def _claimed(self, run_id: str, above: int = 0, first: bool = False) -> list[int]:
        """The attempts above `above` whose claims verify (this process's key), newest
        first; `first`: only the newest. A claim is never rewritten, so what one read
        showed is kept (the fence reads no claim twice)."""
        found = []
        for n in sorted(self._numbered(f"{run_id}/attempts/", 6), reverse=True):
            if n <= above:
                break
            key = f"{run_id}/attempts/{n:06d}"
            if key not in self._claims:
                self._claims[key] = self._record(key, "attempt", {"run": run_id, "attempt": n},
                                                 legacy=lambda data: data) is not None
            if self._claims[key]:
                found.append(n)
                if first:
                    break
        return found

    def attempts(self, run_id: str) -> int:
        return len(self._numbered(f"{run_id}/attempts/", 6))

    def is_current(self, run_id: str, attempt: int) -> bool:
        """Whether `attempt` is still the newest attempt of the run. A process of an older
        attempt checks this before it commits, to narrow the window in which it could; what
        makes a late commit harmless is that its manifest is void (see the module doc)."""
        return not self._claimed(run_id, above=attempt, first=True)

    def claimed_after(self, run_id: str, attempt: int) -> list[int]:
        """The attempts of the run claimed after `attempt` whose claims verify, newest first."""
        return self._claimed(run_id, above=attempt)

    def unrecorded(self, run_id: str, below: int) -> list[int]:
        """The verified attempts older than `below` without a restore record (R3)."""
        points = self.restore_points(run_id)
        return [attempt for attempt in self._claimed(run_id) if attempt < below and attempt not in points]

    def record_restore(self, run_id: str, attempt: int, checkpoint_id: int, closed: str = "") -> bool:
        """R3 (docs/protocol.md): before any of its subtasks touches a sink, `attempt`
        records which checkpoint it restores; every manifest of an older attempt with a
        larger id is void from now on. Written once: False when a verified record was
        there first (a newer attempt closed this one). `closed`: the record of an attempt
        that restores nothing and voids nothing (its point lies past every id), and why."""
        key = f"{run_id}/restores/{attempt:06d}"
        body = {"type": "restore", "key": key, "job": self.job, "run": run_id, "attempt": attempt,
                "checkpoint": MAX_CHECKPOINT_ID if closed else checkpoint_id, **({"closed": closed} if closed else {})}
        data = signed_json(body, self._key)
        if self.storage.put_if_absent(key, data):
            return True
        if closed or self._record(key, "restore", {"run": run_id, "attempt": attempt}) is not None:
            return False  # only the attempt itself replaces a record planted at its key
        self.storage.put(key, data)  # a record planted without the key: it never counted
        return True

    def restore_points(self, run_id: str) -> dict[int, int]:
        """attempt -> the checkpoint id it restored (0: it started from nothing). A record
        of no verified claim voids nothing. The record of a verified claim that does not
        verify stops the restore (RestoreError), since a void manifest must never count;
        except the newest claim's, which is the attempt choosing now, or one that died
        before it recorded its choice (a record planted ahead of it voids nothing)."""
        points = {}
        claimed = set(self._claimed(run_id))
        for attempt in self._numbered(f"{run_id}/restores/", 6):
            key = f"{run_id}/restores/{attempt:06d}"
            if key in self._restores:
                points[attempt] = self._restores[key]
                continue
            if attempt not in claimed:
                logger.warning("%s ignored: no attempt %d of run %s was claimed", self.storage.uri(key), attempt,
                               run_id)
                continue
            body = self._record(key, "restore", {"run": run_id, "attempt": attempt}, legacy=_legacy_restore)
            if body is None or not is_count(body.get("checkpoint")):
                if attempt < max(claimed) and self._exists(key):
                    raise RestoreError(
                        f"the restore record of attempt {attempt} of run {run_id} ({self.storage.uri(key)}) does not "
                        "verify: without it, checkpoints it voided could be restored. It was changed, or written by a "
                        f"raystream before signing (then resume once with {signing.UNSIGNED_ENV}=1)")
                continue
            points[attempt] = self._restores[key] = body["checkpoint"]
        return points

    @staticmethod
    def is_void(manifest: Manifest, points: dict[int, int]) -> bool:
        return any(attempt > manifest.attempt and restored < manifest.checkpoint_id
                   for attempt, restored in points.items())


    # --- refusals -----------------------------------------------------------------------

    def refuse(self, run_id: str, checkpoint_id: int, reason: str) -> None:
        """Remember that a checkpoint failed verification, so no later restore tries it."""
        key = f"{run_id}/refused/{checkpoint_id:012d}"
        body = {"type": "refusal", "key": key, "job": self.job, "run": run_id, "checkpoint": checkpoint_id,
                "reason": reason[:4000]}
        self.storage.put(key, signed_json(body, self._key))

    def refused(self, run_id: str) -> set[int]:
        """The checkpoints of the run refused before; a record that does not verify refuses
        nothing (the checkpoint is verified again when it is chosen)."""
        return {n for n in self._numbered(f"{run_id}/refused/", 12) if self.refusal(run_id, n)}

    def refusal(self, run_id: str, checkpoint_id: int) -> str:
        """Why a checkpoint was refused, as recorded ("" when it was not)."""
        body = self._record(f"{run_id}/refused/{checkpoint_id:012d}", "refusal",
                            {"run": run_id, "checkpoint": checkpoint_id},
                            legacy=lambda data: {"reason": data.decode("utf-8", "replace")})
        return str(body.get("reason") or "refused") if body is not None else ""


def _legacy_restore(data: bytes) -> dict[str, Any] | None:
    """A restore record as a raystream before signing wrote it: {"checkpoint": n}."""
    try:
        body = signing.parse_json(data, "restore record")
    except CorruptCheckpointError:
        return None
    return {"checkpoint": body["checkpoint"]} if set(body) == {"checkpoint"} and is_count(body["checkpoint"]) else None
