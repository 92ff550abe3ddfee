"""The simulation against the defects it exists to find: each protection of the protocols,
removed one at a time (a mutant that puts the defect back), must make seeded schedules
fail. `python -m tests.simulation.protections [SEEDS]` prints, per protection, the seeds
that fail without it; tests/simulation/test_protections.py checks that every mutant is
caught within the default run's schedules.

Each mutant is the code as it was before the protection (or the smallest change that
removes it), patched in for the run.
"""
from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from typing import Any, Callable, Iterator

from raystream._runtime.checkpointing import recovery
from raystream._runtime.state.store import CheckpointStore
from raystream._runtime.subtask.source_reader import SourceReader
from raystream.errors import CorruptCheckpointError, RestoreError, StagedDataMissingError

from . import sim
from .protections_batches import MUTANTS as BATCH_MUTANTS
from .protections_files import MUTANTS as FILE_MUTANTS, patched
from .protections_state import MUTANTS as STATE_MUTANTS


# --- R5: a run with checkpoints of its own never goes back to its origin ----------------------


def _choose_origin_first(store, run_id, refused, *, max_parallelism, keyed):
    """The restore choice that fell back to the run's origin once its own were all refused."""
    ids = store.manifest_ids(run_id)
    points = store.restore_points(run_id)
    refused.update(store.refused(run_id))
    for checkpoint_id in reversed(ids):
        if checkpoint_id in refused:
            continue
        try:
            manifest = store.load_manifest(run_id, checkpoint_id)
        except CorruptCheckpointError as exc:
            store.refuse(run_id, checkpoint_id, str(exc))
            refused.add(checkpoint_id)
            continue
        if store.is_void(manifest, points):
            continue
        return manifest
    origin = store.origin(run_id)
    if origin is not None:
        return origin
    if refused & set(ids):
        raise RestoreError(f"no checkpoint of run {run_id} can be restored (refused: {sorted(refused & set(ids))})")
    return None


@contextlib.contextmanager
def origin_after_refusals() -> Iterator[None]:
    with patched(recovery, "choose_checkpoint", _choose_origin_first):
        yield


# --- PostgresSink ---------------------------------------------------------------------------


@contextlib.contextmanager
def recover_touches_other_runs() -> Iterator[None]:
    """recover rolls back every stale prepared transaction of the step and subtask, of any run."""
    from raystream.connectors.postgres import writer as w

    def recover(self, txns, checkpoint_id):
        for txn in txns:
            self.commit(txn)
        keep = {t.gid for t in txns}
        for gid in self._db.prepared(self._owner + "|"):
            parsed = w.Gid.parse(gid)
            if gid in keep or parsed is None or parsed.subtask % self._ctx.parallelism != self._ctx.subtask:
                continue
            if parsed.run_id == self._ctx.run_id and parsed.attempt >= self._ctx.attempt:
                continue
            self._db.rollback_prepared(gid)

    with patched(w.PostgresWriter, "recover", recover):
        yield


@contextlib.contextmanager
def upsert_writes_held_keys() -> Iterator[None]:
    """Upsert writes every buffered key, whatever a prepared transaction of its own holds."""
    from raystream.connectors.postgres import writer as w

    def flush(self):
        names = self._db.names
        rows = {k: (names, r) for k, r in self._latest.items()}
        self._latest = {}
        for key, row in self._carried.items():
            rows.setdefault(key, row)
        self._carried = {}
        self._write_rows(list(rows.values()))
        self._open.update(rows)

    with patched(w.PostgresWriter, "_flush", flush):
        yield


@contextlib.contextmanager
def upsert_rows_replaced_not_merged() -> Iterator[None]:
    """A later upsert row of a key replaces an earlier one, whatever columns each names."""
    from raystream.connectors.postgres import writer as w

    with patched(w, "_merged", lambda older, newer: newer):
        yield


@contextlib.contextmanager
def pre_commit_without_settling() -> Iterator[None]:
    """A pre-commit does not wait for the earlier checkpoints' fate (C6a)."""
    from raystream._runtime.checkpointing.subtask_side import SubtaskCheckpoints

    async def settle(self, checkpoint_id):
        aborted = {c for c in self._aborted if c < checkpoint_id}
        for op in self.sinks:
            op.abort_pending(aborted)

    with patched(SubtaskCheckpoints, "_settle", settle):
        yield


@contextlib.contextmanager
def unknown_manifest_write_aborts() -> Iterator[None]:
    """A manifest write that failed is reported as an aborted checkpoint, though it may have landed."""
    from raystream._runtime.checkpointing.coordinator_side import Checkpointer

    with patched(Checkpointer, "_undecided", Checkpointer._abort):
        yield


@contextlib.contextmanager
def forgotten_commits_are_missing() -> Iterator[None]:
    """A restored transaction whose status the server no longer knows is taken as lost."""
    from raystream.connectors.postgres import writer as w

    def commit(self, txn):
        if not self._db.commit_prepared(txn.gid) and self._db.status(txn.xid) != "committed":
            raise StagedDataMissingError(f"{txn.gid} is gone and was not committed")
        with self._held_lock:
            self._held.pop(txn.gid, None)

    with patched(w.PostgresWriter, "commit", commit):
        yield


@contextlib.contextmanager
def two_prepared_per_subtask() -> Iterator[None]:
    """The check asks the server for 2 prepared transactions per sink subtask."""
    with patched(sim, "prepared_at_once", lambda sink, parallelism, job: 2 * parallelism):
        yield


# --- sources ----------------------------------------------------------------------------------


@contextlib.contextmanager
def gone_partitions_lose_offsets() -> Iterator[None]:
    with patched(SourceReader, "offsets", lambda self: {k: p.snapshot() for k, p in self.parts.items()}):
        yield


# --- signed records ------------------------------------------------------------------------------


@contextlib.contextmanager
def unsigned_restore_records_trusted() -> Iterator[None]:
    """Restore records are read as plain JSON, whoever wrote them (issue 22, finding 3)."""
    def restore_points(self, run_id):
        points = {}
        for key in self.storage.list(f"{run_id}/restores/"):
            try:
                body = json.loads(self.storage.get(key))
                points[int(key.rsplit("/", 1)[1])] = int(body["checkpoint"])
            except (ValueError, KeyError, TypeError):
                pass
        return points

    with patched(CheckpointStore, "restore_points", restore_points):
        yield


# --- stop -------------------------------------------------------------------------------------


@contextlib.contextmanager
def stop_lost_with_its_coordinator() -> Iterator[None]:
    with patched(sim.Scenario, "protect_stop", False):
        yield


MUTANTS: dict[str, tuple[str, Callable[[], Any]]] = {
    "origin_after_refusals": ("defect 1: a run rewinds to its origin when its own checkpoints are refused",
                            origin_after_refusals),
    "upsert_writes_held_keys": ("defect 2: upsert waits for its own prepared transactions' locks",
                                upsert_writes_held_keys),
    "upsert_rows_replaced_not_merged": ("review: upsert rows of one key naming other columns replace each other",
                                        upsert_rows_replaced_not_merged),
    "pre_commit_without_settling": ("defect 2's fix (C6a): a pre-commit on top of an undecided transaction",
                                    pre_commit_without_settling),
    "unknown_manifest_write_aborts": ("C6a: a manifest write of unknown outcome reported as aborted",
                                      unknown_manifest_write_aborts),
    "recover_touches_other_runs": ("defect 3: recover rolls back other runs' prepared transactions",
                                   recover_touches_other_runs),
    "gone_partitions_lose_offsets": ("defect 5: a partition gone for a run loses its offset",
                                     gone_partitions_lose_offsets),
    "stop_lost_with_its_coordinator": ("defect 10: a stop is lost when the coordinator dies",
                                       stop_lost_with_its_coordinator),
    "two_prepared_per_subtask": ("defect 11: the check counts 2 prepared transactions per subtask",
                                 two_prepared_per_subtask),
    "forgotten_commits_are_missing": ("an old savepoint's forgotten commits taken as lost",
                                      forgotten_commits_are_missing),
    "unsigned_restore_records_trusted": ("issue 22: a planted restore record rewinds a run to the beginning",
                                         unsigned_restore_records_trusted),
    **FILE_MUTANTS,  # FileSink: rolled parts cut back, savepoint files, S3 tails, compaction
    **BATCH_MUTANTS,  # NaN in min and max across batches; idleness of source partitions
    **STATE_MUTANTS,  # incremental keyed state: changes, parts, merges, retention (I1-I6)
}


def _fails(args: tuple[int, str]) -> bool:
    seed, directory = args
    try:
        sim.run_schedule(seed, directory)
    except Exception:  # noqa: BLE001 - any failure counts: an invariant, a crash, a hang
        return True
    return False


def failing_seeds(mutant: str, seeds: range, out: str, stop_after: int | None = None,
                  workers: int = min(2, os.cpu_count() or 1)) -> list[int]:
    """Seeds whose schedules fail with `mutant` patched in, played in `workers` forked
    processes (which inherit the patch); in seed order, so `stop_after` keeps the first."""
    failed = []
    args = [(seed, os.path.join(out, f"{mutant}-{seed}")) for seed in seeds]
    with MUTANTS[mutant][1](), multiprocessing.get_context("fork").Pool(workers) as pool:
        for seed, fails in zip(seeds, pool.imap(_fails, args)):  # leaving the block terminates the rest
            if fails:
                failed.append(seed)
                if stop_after is not None and len(failed) >= stop_after:
                    break
    return failed


def main(argv: list[str]) -> None:
    logging.disable(logging.CRITICAL)
    os.fsync = lambda fd: None  # power loss is not simulated
    n = int(argv[0]) if argv else 1000
    names = argv[1:] or list(MUTANTS)
    with tempfile.TemporaryDirectory() as out:
        for name in names:
            started = time.monotonic()
            failed = failing_seeds(name, range(n), out)
            print(f"{name}: {len(failed)} of {n} seeds fail ({time.monotonic() - started:.0f} s); first: "
                  f"{failed[:8]}  -- {MUTANTS[name][0]}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("RAYSTREAM_CHECKPOINT_KEY", "the simulation's key")  # tests/conftest.py does this for pytest
    main(sys.argv[1:])
