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
"""
from __future__ import annotations

import io
import json
import logging
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from raystream._file_names import SEP, committed_checkpoint
from raystream._storage import Storage, open_storage
from raystream.errors import JobDefinitionError

logger = logging.getLogger(__name__)

_MANIFEST = "_compaction-"


@dataclass(frozen=True)
class Compaction:
    """What one `compact_files` call did."""

    files_in: int
    files_out: int
    rows: int


def _manifests(storage: Storage, keys: list[str]) -> list[dict]:
    found = []
    for key in keys:
        if key.startswith(_MANIFEST) and key.endswith(".json"):
            try:
                found.append(json.loads(storage.get(key)))
            except FileNotFoundError:
                continue  # finished meanwhile
    return found


def visible_files(directory: str) -> list[str]:
    """The keys a reader of `directory` reads: its committed files (names not starting with
    `_` or `.`), minus those replaced by a published compaction."""
    storage = open_storage(directory)
    keys = [k for k in storage.list("") if "/" not in k]
    visible = {k for k in keys if not k.startswith(("_", "."))}
    replaced = {name for m in _manifests(storage, keys) if m["output"] in visible for name in m["inputs"]}
    return sorted(visible - replaced)


def compact_files(directory: str, *, target_size: int = 128 * 1024 * 1024, min_files: int = 2,
                  keep_checkpoints: int = 3) -> Compaction:
    """Merge the committed Parquet files of `directory` into files of about `target_size`
    bytes (groups of fewer than `min_files` stay as they are).

    Safe to run while a job writes there, one compaction at a time: it takes only files
    committed when it starts, and leaves the files of each sink subtask's newest
    `keep_checkpoints` checkpoints as they are, because a restore commits the restored
    checkpoint's files again (and a fall-back past a refused checkpoint, the one before)."""
    if not isinstance(target_size, int) or target_size < 1:
        raise JobDefinitionError(f"compact_files target_size must be a number of bytes >= 1; got {target_size!r}")
    if not isinstance(keep_checkpoints, int) or keep_checkpoints < 1:
        raise JobDefinitionError(f"compact_files keep_checkpoints must be an integer >= 1; got {keep_checkpoints!r}")
    storage = open_storage(directory)
    keys = [k for k in storage.list("") if "/" not in k]
    _finish_earlier(storage, keys)
    candidates = _compactable([k for k in visible_files(directory) if k.endswith(".parquet")], keep_checkpoints)
    groups: list[list[tuple[str, bytes]]] = [[]]
    size = 0
    for key in candidates:
        data = storage.get(key)
        if size >= target_size:
            groups.append([])
            size = 0
        groups[-1].append((key, data))
        size += len(data)
    done = Compaction(0, 0, 0)
    for group in groups:
        if len(group) >= min_files:
            rows = _merge(storage, group)
            done = Compaction(done.files_in + len(group), done.files_out + 1, done.rows + rows)
    logger.info("compacted %d files of %s into %d (%d rows)", done.files_in, directory, done.files_out, done.rows)
    return done


def _compactable(names: list[str], keep: int) -> list[str]:
    """`names` without the files of each writer's newest `keep` checkpoints."""
    newest: dict[str, list[int]] = {}
    for name in names:
        checkpoint = committed_checkpoint(name)
        if checkpoint is not None:
            newest.setdefault(_writer(name), []).append(checkpoint)
    kept = {w: set(sorted(set(c))[-keep:]) for w, c in newest.items()}
    return [n for n in names if committed_checkpoint(n) not in kept.get(_writer(n), ())]


def _writer(name: str) -> str:
    return SEP.join(name.split(SEP)[:3])  # part-<step>@<subtask>@<run>


def _merge(storage: Storage, group: list[tuple[str, bytes]]) -> int:
    name = uuid.uuid4().hex[:12]
    table = pa.concat_tables([pq.read_table(pa.BufferReader(data)) for _, data in group], promote_options="default")
    buf = io.BytesIO()
    pq.write_table(table, buf)
    staged, output, manifest = f"_compacting-{name}.parquet", f"part-compacted-{name}.parquet", f"{_MANIFEST}{name}.json"
    storage.put(staged, buf.getvalue())  # 1
    storage.put(manifest, json.dumps({"output": output, "inputs": [k for k, _ in group]}).encode())  # 2
    storage.promote([(staged, output)])  # 3
    storage.delete([k for k, _ in group])  # 4
    storage.delete([manifest])
    return table.num_rows


def _finish_earlier(storage: Storage, keys: list[str]) -> None:
    """Complete or undo compactions that died part way (see the module's steps)."""
    visible = {k for k in keys if not k.startswith(("_", "."))}
    for key in [k for k in keys if k.startswith(_MANIFEST)]:
        try:
            manifest = json.loads(storage.get(key))
        except FileNotFoundError:
            continue
        if manifest["output"] in visible:  # published: the inputs go
            storage.delete(manifest["inputs"])
        else:  # never published: the merged file goes
            storage.delete([manifest["output"].replace("part-compacted-", "_compacting-", 1)])
        storage.delete([key])
    # A merged file written but with no manifest yet (died between steps 1 and 2).
    manifests = {k[len(_MANIFEST):-len(".json")] for k in keys if k.startswith(_MANIFEST)}
    storage.delete([k for k in keys if k.startswith("_compacting-")
                    and k[len("_compacting-"):-len(".parquet")] not in manifests])
