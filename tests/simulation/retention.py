"""C7's oracle in the simulation: after each retention by a coordinator whose attempt is
still the newest, the run's newest `retain` checkpoints that a restore could choose
(neither void nor refused), judged from every manifest that ever landed rather than from
a listing, are still there with every snapshot and part they name, and no older manifest
is (the tree stays bounded). And no id of a run lands twice.

A replaced coordinator's retention (faults.py, `cut_off`) is not judged here: it must
delete nothing, and the restores after it show what it deleted."""
from __future__ import annotations

from typing import Any, Callable

from raystream._runtime.state.manifest import Manifest
from raystream._runtime.state.store import CheckpointStore


def watch_retention(scenario: Any) -> Callable[..., None]:
    """`CheckpointStore.retain` (or the mutant in its place), then the oracle."""
    real = CheckpointStore.retain
    landed: list[Manifest] = []  # storage.published, read once each

    def retain(self: CheckpointStore, run_id: str, keep: int, attempt: int | None = None) -> None:
        try:
            real(self, run_id, keep, attempt)
        except Exception as exc:  # the Checkpointer logs it and goes on: nothing here makes it fail
            scenario.trace.retention.append(f"retention by attempt {attempt} of {run_id} failed: {exc!r}")
            raise
        storage = scenario.storage
        if attempt is None or self is not scenario.store:
            return
        if any(int(k.rsplit("/", 1)[1]) > attempt for k in storage.list(f"{run_id}/attempts/")):
            return  # replaced
        landed.extend(Manifest.from_json(data, self._key) for data in storage.published[len(landed):])
        own = {m.checkpoint_id: m for m in landed if m.run_id == run_id}
        points, refused = self.restore_points(run_id), self.refused(run_id)
        counting = [n for n in sorted(own, reverse=True) if n not in refused and not self.is_void(own[n], points)]
        for n in counting[:keep]:
            metas = own[n].snapshots
            needs = [self.manifest_key(run_id, n)] + [m.key for m in metas] + [p for m in metas for p in m.parts]
            gone = [key for key in needs if key not in storage.objects]
            if gone:
                scenario.trace.retention.append(
                    f"retention by attempt {attempt} of {run_id} (retain={keep}) left checkpoint {n}, which counts, "
                    f"without {gone[0]}")
                return
        if len(counting) >= keep:  # bounded: nothing older than the kept ones is left
            older = [n for n in self.manifest_ids(run_id) if n < counting[keep - 1]]
            if older:
                scenario.trace.retention.append(
                    f"retention by attempt {attempt} of {run_id} (retain={keep}) left manifest {older[0]}, older "
                    f"than the {keep} newest that count")

    return retain


def reused_ids(scenario: Any) -> list[str]:
    """Manifests that landed under an id of their run that an earlier one had (C1: ids are
    never reused, also after retention deleted the manifest that had it)."""
    seen: set[tuple[str, int]] = set()
    found = []
    for data in scenario.storage.published:
        m = Manifest.from_json(data, scenario.store._key)
        if (m.run_id, m.checkpoint_id) in seen:
            found.append(f"checkpoint {m.checkpoint_id} of {m.run_id} landed twice (the second by attempt {m.attempt})")
        seen.add((m.run_id, m.checkpoint_id))
    return found
