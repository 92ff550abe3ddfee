"""Incremental keyed state (docs/protocol.md, I1-I6), and steps refusing state they would
misread (changed.py), each protection removed: the simulation must find every one of
these in some schedule (test_protections.py)."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from raystream._runtime.operators.window_tables import WindowTables
from raystream._runtime.state import changelog, window_entries
from raystream._runtime.state.changelog import StateChangelog
from raystream._runtime.state.store import CheckpointStore

from . import control
from .protections_files import patched


@contextlib.contextmanager
def changes_left_out() -> Iterator[None]:
    """I1/I2: an incremental snapshot holds no changes of a step that reports changed keys."""
    real = StateChangelog.capture

    def capture(self, ops):
        ops = list(ops)
        keyed, is_changes, parts = real(self, ops)
        if is_changes:
            keyed = {step: (({}, []) if getattr(op, "written", None) is None else keyed[step])
                     for step, op in zip(keyed, ops)}
        return keyed, is_changes, parts

    with patched(StateChangelog, "capture", capture):
        yield


@contextlib.contextmanager
def parts_applied_newest_first() -> Iterator[None]:
    """I5: a restore applies the parts in the wrong order, so older values win."""
    def materialize(storage, state):
        if not state.changelog:
            return changelog.materialize(storage, state)
        tables: dict[str, dict[Any, Any]] = {}
        changelog.apply_part(tables, state.keyed, False)
        for part in reversed(state.parts):
            changelog.apply_part(tables, *changelog.read_part(storage, part))
        state.keyed, state.changelog = tables, False
        return state

    with patched(control, "materialize", materialize):  # the name the simulated restore calls
        yield


@contextlib.contextmanager
def window_rows_forget_deleted_keys() -> Iterator[None]:
    """I2: a window step's incremental snapshot (Arrow rows, state/window_entries.py) lists
    no key deleted since the last one, so a restore brings back windows that had fired
    and gone, or keys whose windows all closed."""
    real = WindowTables.changed_entries

    def changed_entries(self, keys):
        picked = real(self, keys)
        return None if picked is None else (picked[0], [])

    with patched(WindowTables, "changed_entries", changed_entries):
        yield


@contextlib.contextmanager
def window_rows_read_unfired() -> Iterator[None]:
    """I5: whoever reads a window step's Arrow rows back (a restore, a merge, the checkpoint
    reader: changelog.py) takes every window as not fired, so a restored step fires windows
    again. The snapshot is right; only what is read from it is not."""
    real = changelog.per_key

    def per_key(table):
        state = real(table)
        if isinstance(table, window_entries.WindowEntries):
            for windows in state.values():
                for entry in windows.values():
                    entry[1] = False
        return state

    with patched(changelog, "per_key", per_key):
        yield


@contextlib.contextmanager
def late_merge_replaces_parts() -> Iterator[None]:
    """I4: a merge that finishes after its parts were replaced (a full snapshot, a failed
    upload) is taken all the same, so the next snapshots build on a stale base."""
    def merged(self, upto, base):
        self.parts = [base] + (self.parts[self.parts.index(upto) + 1:] if self.parts and upto in self.parts else [])

    with patched(StateChangelog, "merged", merged):
        yield


@contextlib.contextmanager
def retention_forgets_parts() -> Iterator[None]:
    """I6: retention deletes old snapshots and bases although kept snapshots build on them."""
    real = CheckpointStore.load_manifest

    def load_manifest(self, run_id, checkpoint_id):
        manifest = real(self, run_id, checkpoint_id)
        for meta in manifest.snapshots:
            object.__setattr__(meta, "parts", ())
        return manifest

    real_retain = CheckpointStore.retain

    def retain(self, run_id, keep, attempt=None):
        with patched(CheckpointStore, "load_manifest", load_manifest):
            real_retain(self, run_id, keep, attempt)

    with patched(CheckpointStore, "retain", retain):
        yield


@contextlib.contextmanager
def retention_by_a_replaced_coordinator() -> Iterator[None]:
    """C7: a coordinator runs retention after its attempt was replaced (it counts its own
    late manifest, void, and deletes what the new attempt restored)."""
    real = CheckpointStore.retain

    def retain(self, run_id, keep, attempt=None):
        real(self, run_id, keep)

    with patched(CheckpointStore, "retain", retain):
        yield


@contextlib.contextmanager
def retention_counts_void_manifests() -> Iterator[None]:
    """C7: retention counts void manifests among the kept ones (it reads no restore record)."""
    real = CheckpointStore.retain

    def retain(self, run_id, keep, attempt=None):
        self.restore_points = lambda run_id: {}
        try:
            real(self, run_id, keep, attempt)
        finally:
            del self.restore_points

    with patched(CheckpointStore, "retain", retain):
        yield


@contextlib.contextmanager
def upload_failed_keeps_parts() -> Iterator[None]:
    """I3: a failed upload is remembered but the parts stay, so the next snapshot is not
    full: it and every one after it build on the failed part and are declined, and
    checkpoints abort until the job restarts (review 44)."""
    def upload_failed(self, part):
        self._failed.add(part.key)

    with patched(StateChangelog, "upload_failed", upload_failed):
        yield


@contextlib.contextmanager
def retention_newest_only() -> Iterator[None]:
    """I6: retention keeps the parts of the newest checkpoint it keeps only, not those of
    the older kept ones (review 44): a restore that falls back to one of those finds a
    part gone."""
    real_retain, real_void = CheckpointStore.retain, CheckpointStore.is_void

    def retain(self, run_id, keep, attempt=None):
        kept = []

        def is_void(manifest, points):  # retention reads a kept manifest's parts after this
            void = real_void(manifest, points)
            if not void:
                kept.append(manifest.checkpoint_id)
                if len(kept) > 1:
                    for meta in manifest.snapshots:
                        object.__setattr__(meta, "parts", ())
            return void

        self.is_void = is_void  # on the store, as retention_counts_void_manifests does (a staticmethod)
        try:
            real_retain(self, run_id, keep, attempt)
        finally:
            del self.is_void

    with patched(CheckpointStore, "retain", retain):
        yield


@contextlib.contextmanager
def per_record_steps_take_columnar_state() -> Iterator[None]:
    """A per-record step takes whatever state a checkpoint holds under its id (before
    review 47): a reduce restored from a columnar aggregate's or window's state."""
    from raystream._runtime.operators.base import KeyedOp

    with patched(KeyedOp, "restore_meta", lambda self, metas: None):
        yield


@contextlib.contextmanager
def other_key_columns_taken() -> Iterator[None]:
    """A columnar step keyed by other columns than its checkpoint's takes its state (before
    review 47 for windows; aggregates and joins before the simulation's changed runs)."""
    from raystream._runtime.operators import aggregate_op, columnar_join, columnar_windows

    def check_key_columns(step_id: str, before: Any, now: Any) -> None:
        return None

    with patched(columnar_windows, "check_key_columns", check_key_columns), \
            patched(aggregate_op, "check_key_columns", check_key_columns), \
            patched(columnar_join, "check_key_columns", check_key_columns):
        yield


MUTANTS: dict[str, tuple[str, Callable[[], Any]]] = {
    "changes_left_out": ("I2: an incremental snapshot leaves out a step's changed keys", changes_left_out),
    "parts_applied_newest_first": ("I5: a restore applies the parts newest first", parts_applied_newest_first),
    "late_merge_replaces_parts": ("I4: a merge that finished after its parts were replaced is taken",
                                  late_merge_replaces_parts),
    "retention_forgets_parts": ("I6: retention deletes parts that kept snapshots build on", retention_forgets_parts),
    "retention_by_a_replaced_coordinator": ("C7: a replaced coordinator's retention deletes what the new attempt "
                                            "restored", retention_by_a_replaced_coordinator),
    "retention_counts_void_manifests": ("C7: void manifests take retain places", retention_counts_void_manifests),
    # review 44's: first failing seeds 8 (only I3's oracle sees it, keyed_state.capture: output
    # stays exactly-once) and 1 (the retention oracle, retention.py)
    "upload_failed_keeps_parts": ("I3: a failed upload does not make the next snapshot full",
                                  upload_failed_keeps_parts),
    "window_rows_forget_deleted_keys": ("I2: a window step's Arrow rows list no deleted key",
                                        window_rows_forget_deleted_keys),
    "window_rows_read_unfired": ("I5: a window step's Arrow rows are read back as windows that never fired",
                                 window_rows_read_unfired),
    "per_record_steps_take_columnar_state": ("review 47: a per-record step took a columnar step's state under its id",
                                             per_record_steps_take_columnar_state),
    "other_key_columns_taken": ("review 47: a columnar step keyed by other columns took its checkpoint's state",
                                other_key_columns_taken),
    "retention_newest_only": ("I6: retention keeps the parts of its newest kept checkpoint only",
                              retention_newest_only),
}
