"""C7's and I6's oracles in the simulation: what is left of the checkpoints a restore could
choose (neither void nor refused), judged from every manifest that ever landed rather than
from a listing.

After each retention by a coordinator whose attempt is still the newest, the run's newest
`retain` checkpoints that count are still there, and no older manifest is (the tree stays
bounded). After every retention, also one by a replaced coordinator (faults.py, `cut_off`),
each checkpoint of the run that counts and is still there reads back whole through its
parts, checksums and all (I6: a kept checkpoint is restorable).
It is read through the parts its snapshots hold, not checked against the part names its
manifest lists: those are what retention reads to choose what to keep, so a wrong list
would fool both. The same read at the end of a schedule, for every run (what anything
else deleted); and a restore must not refuse a checkpoint of its own run for its keyed
state (control.py). A snapshot the schedule damaged on purpose is refused by restores
(R5), so it and the checkpoints after it in its run, which may build on it, are excused.

And no id of a run lands twice."""
from __future__ import annotations

from typing import Any, Callable

from raystream._runtime.state.changelog import materialize
from raystream._runtime.state.manifest import Manifest
from raystream._runtime.state.store import CheckpointStore
from raystream.errors import CorruptCheckpointError


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
        replaced = any(int(k.rsplit("/", 1)[1]) > attempt for k in storage.list(f"{run_id}/attempts/"))
        by = f"retention by {'replaced ' if replaced else ''}attempt {attempt} of {run_id} (retain={keep})"
        landed.extend(Manifest.from_json(data, self._key) for data in storage.published[len(landed):])
        counting = _counting(self, run_id, landed)
        if not replaced:
            gone = [m.checkpoint_id for m in counting[:keep] if _key(self, m) not in storage.objects]
            if gone:
                scenario.trace.retention.append(f"{by} deleted checkpoint {gone[0]}, one of the {keep} newest "
                                                f"that count")
                return
            if len(counting) >= keep:  # bounded: nothing older than the kept ones is left
                older = [n for n in self.manifest_ids(run_id) if n < counting[keep - 1].checkpoint_id]
                if older:
                    scenario.trace.retention.append(f"{by} left manifest {older[0]}, older than the {keep} "
                                                    f"newest that count")
                    return
        found = unreadable(self, counting, scenario.damaged)
        if found:
            scenario.trace.retention.append(f"{by} left {found[0]}")

    return retain


def unreadable_at_end(scenario: Any) -> list[str]:
    """I6 at the end of a schedule: each run's checkpoints that count and are there read
    back whole (only retention deletes, and each is judged above; this is for the rest)."""
    store = scenario.store
    landed = [Manifest.from_json(data, store._key) for data in scenario.storage.published]
    found = []
    for run_id in sorted({r.run_id for r in scenario.runs}):
        found += unreadable(store, _counting(store, run_id, landed), scenario.damaged)
    return found


def unreadable(store: CheckpointStore, counting: list[Manifest], damaged: set[tuple[str, int]]) -> list[str]:
    """Of the checkpoints `counting` still in storage, those whose snapshots do not read back
    whole through their parts, and why."""
    found = []
    for manifest in counting:
        if _key(store, manifest) not in store.storage.objects:
            continue  # gone: which may go is the window's to say (above), and restores show the rest
        for meta in manifest.snapshots:
            try:
                materialize(store.storage, store.verify_snapshot(store.storage.get(meta.key), meta))
            except (CorruptCheckpointError, FileNotFoundError) as exc:
                why = breaks_kept(manifest, exc, damaged)
                if why is not None:
                    found.append(f"checkpoint {manifest.run_id}/{manifest.checkpoint_id}, which counts, unreadable: "
                                 f"{why}")
                break
    return found


def breaks_kept(manifest: Manifest, exc: BaseException, damaged: set[tuple[str, int]]) -> str | None:
    """Why reading `manifest`'s keyed state failing with `exc` breaks I6, or None: the
    error is not about its snapshots or parts (a sink's staged data, which R4 reads too),
    or it is corrupt where the schedule flipped a bit, in it or in an earlier checkpoint of
    its run that it may build on (faults.py, `damage`)."""
    text = str(exc)
    if "/snapshots/" not in text and "/state/" not in text:
        return None
    if isinstance(exc, CorruptCheckpointError) and any(
            run_id == manifest.run_id and n <= manifest.checkpoint_id for run_id, n in damaged):
        return None
    return f"{type(exc).__name__}: {text[:300]}"


def _counting(store: CheckpointStore, run_id: str, landed: list[Manifest]) -> list[Manifest]:
    """The run's manifests that ever landed that a restore could choose, newest first."""
    own = {m.checkpoint_id: m for m in landed if m.run_id == run_id}
    points, refused = store.restore_points(run_id), store.refused(run_id)
    return [own[n] for n in sorted(own, reverse=True) if n not in refused and not store.is_void(own[n], points)]


def _key(store: CheckpointStore, manifest: Manifest) -> str:
    return store.manifest_key(manifest.run_id, manifest.checkpoint_id)


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
