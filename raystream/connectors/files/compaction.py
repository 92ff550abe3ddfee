"""Compaction of a FileSink directory's committed small files into large ones.

A Parquet file must be closed at every checkpoint, so a Parquet FileSink commits one file
per subtask and checkpoint. `compact_files` merges committed files into files of about
`target_size` bytes, and readers that list through `visible_files` (`read_files` does)
switch from the small files to the large one atomically:

1. The merged file is written under a hidden name, `_compacting-<id>.parquet`.
2. A manifest, `_compaction-<id>.json`, names the merged file and the files it replaces.
3. The merged file is published: renamed (locally) or copied (S3) to
   `part-compacted-<id>.parquet`. From now on a reader that sees it skips the files the
   manifest lists, so every record is read once, before and after.
4. The replaced files are deleted, then the manifest.

A compaction that dies between steps leaves a hidden file or a manifest whose merged file
is not published (ignored by readers; the next compaction removes it), or a published
one whose inputs are still listed (readers skip them; the next compaction finishes the
job). Readers that list the directory themselves and skip only `_` and `.` names see the
merged file and its inputs together between steps 3 and 4.

Files committed with a checkpoint (an exactly-once FileSink's) are merged only when no
retained checkpoint of their run may still need them, as the run's manifests say
(`_keep_from`): a restore of checkpoint n commits again every transaction its snapshots
list, those of earlier aborted checkpoints included (`SnapshotMeta.sink_from`), and a
fall-back past a refused checkpoint retracts the files committed after the one it
restores. So the files of every run's checkpoints from the oldest that a retained
manifest names on are left as they are. A rolled Parquet part (`...-rolled.parquet`,
FileSink's default) is never merged: its name carries the first checkpoint of its rows,
not the one that committed it, and a retained checkpoint that commits it again needs it
(its segments are gone); it is one large file already.

A compaction manifest is a file in the sink's directory, which others may be able to
write, so it is never simply believed: it is read only if it is a regular file of at
most 1 MiB, its `output` must be the `part-compacted-<id>.parquet` of its own name and
its inputs plain names of committed files in the same directory (what compaction
merges: `part-...parquet`), and it must carry a valid signature
(the checkpoint key: docs/security.md). One that fails is ignored with a warning: it
deletes nothing and hides nothing from readers (`compaction_manifests.py`), an unsigned
one of a raystream before signing included.
"""
from __future__ import annotations

import io
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raystream.connectors.files.compaction_manifests import (  # noqa: F401 (MAX_MANIFEST_BYTES: part of this module's API)
    _INPUT, _MANIFEST, _NO_KEY, MAX_MANIFEST_BYTES, _is_manifest, _key_once, _manifests, _signing_key,
)
from raystream.connectors.files.names import SEP, committed_checkpoint, rolled_part
from raystream._storage import Storage, open_storage
from raystream.connectors.files.rows import concat, joined_schema
from raystream.errors import CorruptCheckpointError, JobDefinitionError, RestoreError, SinkError

logger = logging.getLogger(__name__)

_ALL = 2**62  # a run's files from this checkpoint on are kept: none
_MAX_INPUTS = 3000  # so that a manifest stays under MAX_MANIFEST_BYTES (names are < 256 characters)


@dataclass(frozen=True)
class Compaction:
    """What one `compact_files` call did."""

    files_in: int
    files_out: int
    rows: int


def visible_files(directory: str) -> list[str]:
    """The keys a reader of `directory` reads: its committed files (names not starting with
    `_` or `.`), minus those replaced by a published compaction."""
    storage = open_storage(directory)
    keys = [k for k in storage.list("") if "/" not in k]
    visible = {k for k in keys if not k.startswith(("_", "."))}
    replaced: set[str] = set()
    for manifest in _manifests(storage, keys, _key_once()):
        present = [name for name in manifest.inputs if name in visible]
        if manifest.output not in visible or not present:
            continue
        replaced.update(present)
    return sorted(visible - replaced)


def compact_files(directory: str, *, checkpoints: str | None = None, target_size: int = 128 * 1024 * 1024,
                  min_files: int = 2) -> Compaction:
    """Merge the committed Parquet files of `directory` into files of about `target_size`
    bytes (groups of fewer than `min_files` stay as they are).

    Safe to run while a job writes there, one compaction at a time: it takes only files
    committed when it starts. `checkpoints` is the checkpoint root of the job that writes
    here (`<checkpoint storage>/<job name>`), needed when the directory holds files an
    exactly-once FileSink committed with a checkpoint: the files that a retained
    checkpoint may commit again on a restore, or retract on a fall-back, stay as they are
    (read from its manifests)."""
    if not isinstance(target_size, int) or target_size < 1:
        raise JobDefinitionError(f"compact_files target_size must be a number of bytes >= 1; got {target_size!r}")
    signer = _signing_key()  # before anything changes: its manifests are signed (CheckpointKeyError without a key)
    storage = open_storage(directory)
    keys = [k for k in storage.list("") if "/" not in k]
    _finish_earlier(storage, keys, signer)
    # Only what a compaction manifest may name (part-...parquet) is merged, and never a
    # rolled part: it is large already, and a retained checkpoint may commit it again.
    visible = [k for k in visible_files(directory) if _INPUT.fullmatch(k) and not rolled_part(k)]
    runs = {_run(k) for k in visible if committed_checkpoint(k) is not None}
    if runs and checkpoints is None:
        raise JobDefinitionError(
            f"{directory} holds files committed with checkpoints (by an exactly-once FileSink): pass "
            "checkpoints=<the job's checkpoint root, <checkpoint storage>/<job name>>, so that compaction leaves "
            "the files a restore may need")
    keep_from = _keep_from(checkpoints, runs) if runs else {}
    candidates = [k for k in visible if committed_checkpoint(k) is None
                  or committed_checkpoint(k) < keep_from.get(_run(k), 0)]
    groups: list[list[tuple[str, bytes]]] = []
    for alike in _alike([(key, storage.get(key)) for key in candidates]):
        groups.append([])
        size = 0
        for key, data in alike:
            if size >= target_size or len(groups[-1]) >= _MAX_INPUTS:
                groups.append([])
                size = 0
            groups[-1].append((key, data))
            size += len(data)
    done = Compaction(0, 0, 0)
    for group in groups:
        if len(group) >= min_files:
            try:
                rows = _merge(storage, group, signer)
            except SinkError as exc:  # schemas that unify, values that do not fit (2**63 in int64): left as they are
                logger.warning("compaction left %d files of %s as they are: %s", len(group), directory, exc)
                continue
            done = Compaction(done.files_in + len(group), done.files_out + 1, done.rows + rows)
    logger.info("compacted %d files of %s into %d (%d rows)", done.files_in, directory, done.files_out, done.rows)
    return done


def _run(name: str) -> str:
    return name.split(SEP)[2]  # part-<step>@<subtask>@<run>@<checkpoint>@...


def _keep_from(root: str, runs: set[str]) -> dict[str, int]:
    """Run id -> the oldest checkpoint whose files a retained checkpoint of the run (or of
    a run started from it) may still commit again or retract; files of that checkpoint
    and later are kept. 0 keeps every file of the run: it is going and has no manifest
    yet, or a manifest cannot be read. A run the root has no trace of can restore
    nothing: its files are all merged."""
    from raystream._runtime.state.store import CheckpointStore  # not loaded by `import raystream`

    store = _checkpoint_store(root)
    known = set(store.runs())
    if not runs & known:
        raise JobDefinitionError(
            f"no run that wrote these files ({', '.join(sorted(runs)[:3])}) has checkpoints under {root}: give the "
            "checkpoint root of the job that writes to this directory (<checkpoint storage>/<job name>)")
    keep: dict[str, int] = {run: _ALL for run in runs - known}
    for run in sorted(runs & known):
        keep[run] = min(keep.get(run, _ALL), _oldest_needed(store, run))
    for run in sorted(known):  # a run started from another run's checkpoint may restore it (its base)
        try:
            base = store.origin_ref(run)
        except CorruptCheckpointError:
            base = None
        if base is not None and base.run_id in keep and not store.manifest_ids(run):
            base_store = store if base.root == store.root else CheckpointStore(base.root)
            needs = _needs(base_store, base.run_id, base.checkpoint_id)
            keep[base.run_id] = min(keep[base.run_id], 0 if needs is None else needs)
    for run, floor in keep.items():
        if floor >= _ALL and run not in known:
            logger.warning("compacting every file of run %s: %s holds no checkpoint of it", run, root)
    return keep


def _checkpoint_store(root: str) -> Any:
    from raystream._runtime.state.store import CheckpointStore  # not loaded by `import raystream`

    return CheckpointStore(root)


def _oldest_needed(store, run: str) -> int:
    for _ in range(5):  # retention may delete a listed manifest meanwhile: list again
        ids = store.manifest_ids(run)
        if not ids:
            return 0  # going, before its first checkpoint: keep everything
        needs = [_needs(store, run, n) for n in ids]
        if None not in needs:
            return min(needs)
    return 0  # retention keeps outrunning the reads: keep everything this time


def _needs(store, run: str, checkpoint_id: int) -> int | None:
    """The oldest checkpoint whose files restoring `checkpoint_id` commits again (0: unknown;
    None: its manifest is gone, deleted by retention after newer ones were written)."""
    try:
        manifest = store.load_manifest(run, checkpoint_id)
    except FileNotFoundError:
        return None
    except (CorruptCheckpointError, RestoreError) as exc:  # RestoreError: unsigned, or another key
        logger.warning("compaction keeps every file of run %s: manifest %d cannot be read (%s)", run,
                       checkpoint_id, exc)
        return 0
    return min([checkpoint_id] + [s.sink_from for s in manifest.snapshots if s.sink_from])


def _alike(files: list[tuple[str, bytes]]) -> list[list[tuple[str, bytes]]]:
    """The files in classes that make one table where no value changes type
    (`rows.joined_schema`: each file with the first class it joins, in order). Files a
    window step wrote a kind of key each ("a" and b"a", 5 and 1.5, -1 and 2**63) are
    compacted apart, never cast into one."""
    classes: list[tuple[pa.Schema, list[tuple[str, bytes]]]] = []
    for key, data in files:
        schema = pq.read_schema(pa.BufferReader(data))
        for i, (known, members) in enumerate(classes):
            joined = joined_schema(known, schema)
            if joined is not None:
                classes[i] = (joined, members)
                members.append((key, data))
                break
        else:
            classes.append((schema, [(key, data)]))
    return [members for _, members in classes]


def _merge(storage: Storage, group: list[tuple[str, bytes]], key: Any = _NO_KEY) -> int:
    from raystream._runtime.state.manifest import signed_json  # not loaded by `import raystream`

    if key is _NO_KEY:
        key = _signing_key()
    name = uuid.uuid4().hex[:12]
    table = concat([pq.read_table(pa.BufferReader(data)) for _, data in group], f"the files to compact in {storage.uri()}")
    buf = io.BytesIO()
    pq.write_table(table, buf)
    staged, output, manifest = f"_compacting-{name}.parquet", f"part-compacted-{name}.parquet", f"{_MANIFEST}{name}.json"
    storage.put(staged, buf.getvalue())  # 1
    body = {"type": "compaction", "key": manifest, "output": output, "inputs": [k for k, _ in group]}
    storage.put(manifest, signed_json(body, key))  # 2
    storage.promote([(staged, output)])  # 3
    storage.delete([k for k, _ in group])  # 4
    storage.delete([manifest])
    return table.num_rows


def _finish_earlier(storage: Storage, keys: list[str], key: Any) -> None:
    """Complete or undo compactions that died part way (see the module's steps). Only
    manifests that pass the checks (`_read_manifest`) are followed; every name deleted is
    one listed in this directory."""
    visible = {k for k in keys if not k.startswith(("_", "."))}
    for manifest in _manifests(storage, keys, lambda: key):
        if manifest.output in visible:  # published: the inputs go
            storage.delete([name for name in manifest.inputs if name in visible])
        else:  # never published: the merged file goes
            storage.delete([manifest.staged])
        storage.delete([manifest.key])
    # A merged file written but with no manifest yet (died between steps 1 and 2).
    manifests = {k[len(_MANIFEST):-len(".json")] for k in keys if _is_manifest(k)}
    storage.delete([k for k in keys if k.startswith("_compacting-") and k.endswith(".parquet")
                    and k[len("_compacting-"):-len(".parquet")] not in manifests])
