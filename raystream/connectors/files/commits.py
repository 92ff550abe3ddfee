"""What FileSink's two writers share: the transaction of a checkpoint's staged files
(`roll="checkpoint"`, and checkpoints taken before 0.5), their commit, the names of the
files a subtask's run wrote, and JSON lines."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import pyarrow as pa

from raystream._storage import LocalStorage, Storage, open_storage
from raystream.connectors.files.names import SEP as _SEP
from raystream.connectors.files.names import taken_over
from raystream.connectors.files.names import written_by as _written_by
from raystream.connectors.files.rows import as_row, json_default, plain
from raystream.errors import SinkError, StagedDataMissingError
from raystream.sink_api import SinkContext, as_records


class SinkSettings(Protocol):
    """What a writer reads of its FileSink."""

    directory: str
    format: str
    rows_per_file: int
    roll_size: int | None
    roll_interval: float | None


@dataclass
class FileTxn:
    """Staged files of one checkpoint: (staging name, final name) pairs, in `directory`
    ("" for the writer's: a run from a savepoint may write elsewhere, and commits the
    savepoint's files where they are)."""

    files: list[tuple[str, str]] = field(default_factory=list)
    directory: str = ""



def promote(default: Storage, directory: str, txn: FileTxn) -> int:
    """Commit a `roll="checkpoint"` transaction: its pending files renamed; how many."""
    store = default if txn.directory in ("", directory) else open_storage(txn.directory)
    try:
        store.promote(txn.files)  # durable before the commit counts
    except FileNotFoundError as exc:
        raise StagedDataMissingError(
            f"FileSink cannot commit {exc.filename}: neither it nor its staged file exists") from None
    except Exception as exc:
        raise SinkError(f"FileSink could not commit into {store.uri()}: {exc}") from exc
    return len(txn.files)


def run_names(store: Storage, kind: str, ctx: SinkContext) -> list[str]:
    """Names of kind `kind` (`part-`, `_pending-`, `_inprogress-`) written in this run by
    this subtask or the old subtasks it takes over."""
    return [n for n in store.list(f"{kind}{ctx.step_id}{_SEP}")
            if taken_over(n, ctx.run_id, ctx.subtask, ctx.parallelism)]


_TEMP = re.compile(r"\.((?:part-|_inprogress-|_pending-).+)\.[0-9a-f]{32}\.tmp")


def remove_dead_temps(store: Storage, ctx: SinkContext) -> list[str]:
    """Locally: remove the temporary files (`.<name>.<uuid>.tmp`, `LocalStorage.put`) of
    FileSink names that earlier attempts of this run's subtask (or the old subtasks it
    takes over) were writing when they died; never another run's or subtask's. Returns
    their names."""
    if not isinstance(store, LocalStorage):
        return []  # an S3 PUT leaves no partial object
    try:
        listed = os.listdir(store.root)
    except FileNotFoundError:
        return []
    dead = []
    for name in listed:
        match = _TEMP.fullmatch(name)
        if match is None:
            continue
        key = match.group(1)
        if key.startswith(f"part-{ctx.step_id}{_SEP}") or key.startswith((f"_inprogress-{ctx.step_id}{_SEP}",
                                                                             f"_pending-{ctx.step_id}{_SEP}")):
            attempt = _written_by(key, 4 if key.startswith("part-") else 3)
            if taken_over(key, ctx.run_id, ctx.subtask, ctx.parallelism) and attempt < ctx.attempt:
                try:
                    os.unlink(os.path.join(store.root, name))
                except FileNotFoundError:
                    pass
                dead.append(name)
    return dead


_ORJSON = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS


def _json_line(record: Any) -> bytes:
    row = as_row(record)
    try:
        return orjson.dumps(row, default=json_default, option=_ORJSON)
    except TypeError:  # what orjson cannot write (an int past 64 bits): the standard library can, or says why not
        # json writes a NamedTuple as an array without asking json_default: make it a dict first
        return json.dumps(plain(row), separators=(",", ":"), default=json_default).encode("utf-8") + b"\n"


def json_lines(batch: list[Any] | pa.RecordBatch) -> bytes:
    """A micro-batch as JSON lines in UTF-8, one object per record (`rows.as_row`)."""
    return b"".join(map(_json_line, as_records(batch)))
