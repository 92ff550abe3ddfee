"""Protections of FileSink's commits (tests/simulation/protections.py lists them with the
others): rolled parts cut back on a fall-back, a savepoint's files left where they were,
S3 tails, and compaction beside the job. Each mutant is the code as it was before the fix.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator

from raystream.connectors.files import parts as _part_files, compaction
from raystream.connectors.files.names import SEP, committed_checkpoint


@contextlib.contextmanager
def patched(target: Any, name: str, value: Any) -> Iterator[None]:
    saved = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, saved)


@contextlib.contextmanager
def committed_parts_not_cut_back() -> Iterator[None]:
    real = _part_files.commit_part

    def commit_part(storage, part):
        if isinstance(part, _part_files.LocalPart):
            import os as _os
            if not _os.path.exists(storage._path(part.staged)) and _os.path.exists(storage._path(part.final)):
                return  # committed before: done, however long it grew since
        elif not _part_files._upload_exists(_part_files._files.s3_client(), storage.bucket,
                                            storage._key(part.final), part.upload_id):
            try:
                _part_files._files.s3_client().head_object(Bucket=storage.bucket, Key=storage._key(part.final))
                return
            except Exception:  # noqa: BLE001
                pass
        real(storage, part)

    with patched(_part_files, "commit_part", commit_part), \
            patched(sys.modules["raystream.connectors.files.rolling_writer"], "commit_part", commit_part):
        yield


@contextlib.contextmanager
def parquet_parts_not_cut_back() -> Iterator[None]:
    """A committed Parquet part is taken as done, however many rows it has."""
    from raystream.connectors.files import parquet_parts

    real = parquet_parts.final_rows

    def commit(storage, part):
        if real(storage, part.final) is not None:
            storage.delete([n for n, _ in part.segments])
            return
        storage.put(part.final, parquet_parts.merged(storage, part.segments, part.final))
        storage.delete([n for n, _ in part.segments])

    with patched(parquet_parts, "commit_parquet_part", commit), patched(_part_files, "commit_parquet_part", commit):
        yield


@contextlib.contextmanager
def savepoint_files_committed_in_the_new_directory() -> Iterator[None]:
    """A run from a savepoint commits the savepoint's files in its own directory."""
    commits = sys.modules["raystream.connectors.files.commits"]
    rolling = sys.modules["raystream.connectors.files.rolling_writer"]
    staged = sys.modules["raystream.connectors.files.staged_writer"]
    real = commits.promote

    def promote(default, directory, txn):
        return real(default, directory, commits.FileTxn(txn.files))

    with patched(rolling, "promote", promote), patched(staged, "promote", promote), \
            patched(rolling, "storage_of", lambda part, default: default):
        yield


@contextlib.contextmanager
def other_runs_parts_committed() -> Iterator[None]:
    """A run from another run's checkpoint commits (and cuts) that run's open part files."""
    rolling = sys.modules["raystream.connectors.files.rolling_writer"]

    def restore_part(self, part, checkpoint_id):
        self._commit(part)

    with patched(rolling.RollingWriter, "_restore_part", restore_part):
        yield


@contextlib.contextmanager
def tails_deleted_by_the_newest_pre_commit() -> Iterator[None]:
    """S3 tails as objects, deleted relative to the newest pre-committed checkpoint."""
    def persist(self, checkpoint_id):
        tail = None
        if self._buffer:
            tail = f"_tail-{self.final}-{checkpoint_id:012d}"
            self._storage.put(tail, bytes(self._buffer))
            old = [k for k in self._storage.list(f"_tail-{self.final}-") if int(k.rsplit("-", 1)[1]) < checkpoint_id - 1]
            self._storage.delete(old)
        return _part_files.S3Part(self.final, self._upload, tuple(self._parts), tail, self.size)

    real_complete = _part_files._complete

    def complete(storage, part):
        if isinstance(part.tail, str):
            part = _part_files.S3Part(part.final, part.upload_id, part.parts, storage.get(part.tail), part.length)
        real_complete(storage, part)

    with patched(_part_files.S3PartWriter, "persist", persist), patched(_part_files, "_complete", complete):
        yield


@contextlib.contextmanager
def compaction_by_file_names() -> Iterator[None]:
    """Compaction keeps each writer's newest 3 checkpoints by the ids in file names."""
    def compact_files(directory, *, checkpoints=None, target_size=128 << 20, min_files=2):
        storage = compaction.open_storage(directory)
        names = [k for k in compaction.visible_files(directory) if k.endswith(".parquet")]
        newest: dict[str, list[int]] = {}
        for name in names:
            if committed_checkpoint(name) is not None:
                newest.setdefault(SEP.join(name.split(SEP)[:3]), []).append(committed_checkpoint(name))
        kept = {w: set(sorted(set(c))[-3:]) for w, c in newest.items()}
        candidates = [n for n in names if committed_checkpoint(n) not in kept.get(SEP.join(n.split(SEP)[:3]), ())]
        if len(candidates) >= min_files:
            compaction._merge(storage, [(k, storage.get(k)) for k in candidates])
        return compaction.Compaction(len(candidates), 1, 0)

    with patched(compaction, "compact_files", compact_files):
        yield


@contextlib.contextmanager
def compaction_takes_a_gone_manifest_as_needing_nothing() -> Iterator[None]:
    real = compaction._needs

    def needs(store, run, checkpoint_id):
        found = real(store, run, checkpoint_id)
        return compaction._ALL if found is None else found

    with patched(compaction, "_needs", needs):
        yield


MUTANTS: dict[str, tuple[str, Callable[[], Any]]] = {
    "committed_parts_not_cut_back": ("defect 6: a fall-back leaves a rolled, committed file as it grew",
                                     committed_parts_not_cut_back),
    "parquet_parts_not_cut_back": ("a fall-back leaves a rolled, committed Parquet file with its later rows",
                                   parquet_parts_not_cut_back),
    "savepoint_files_committed_in_the_new_directory": (
        "review: a run from a savepoint into another directory commits the savepoint's files there",
        savepoint_files_committed_in_the_new_directory),
    "other_runs_parts_committed": ("review: a run from another run's checkpoint commits that run's open file",
                                   other_runs_parts_committed),
    "tails_deleted_by_the_newest_pre_commit": ("defect 7: S3 tails deleted by the newest pre-commit",
                                               tails_deleted_by_the_newest_pre_commit),
    "compaction_by_file_names": ("defect 8: compaction keeps the newest 3 checkpoints by file names",
                                 compaction_by_file_names),
    "compaction_takes_a_gone_manifest_as_needing_nothing": (
        "review: compaction takes a manifest retention deleted meanwhile as needing nothing",
        compaction_takes_a_gone_manifest_as_needing_nothing),
}
