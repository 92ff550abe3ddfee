"""Recoverable Parquet part files: FileSink's rolling policy for Parquet.

A Parquet file cannot be appended to once closed, and one cut off before its footer (which
is written last) cannot be read, so an open Parquet part is kept as segments, and rolling
it rewrites them into one file:

1. `write` buffers rows; every `rows_per_file` rows, and at each checkpoint (`persist`),
   the buffer becomes a segment: a complete small Parquet file under a hidden name
   (`_inprogress-...-s<k>.parquet`), written whole (an atomic rename locally, one PUT
   on S3).
2. `persist` returns the part's description for the checkpoint: its final name and its
   segments with their row counts. Only names travel in the snapshot.
3. `close` (the part rolled): the same, with the last rows.
4. `commit_parquet_part` merges the recorded segments, in order, into one Parquet file
   under the final name (each segment one or more row groups of it), written whole, and
   then deletes the segments. Idempotent: a final file that exists is the merge done.
   One that holds more rows than recorded (a fall-back past a refused checkpoint that
   committed the part after more segments were added) is rewritten with its first
   `rows` rows, which are the recorded segments' (T4). A segment gone while the final
   file does not exist raises FileNotFoundError.
5. `adopt_parquet_part`: a part that *another run* recorded (the checkpoint a run
   started from) belongs to that run: never committed or cut here. Committed already,
   its rows are visible; otherwise its recorded segments are merged into a file of the
   new run.

Cost: every row is written twice (its segment, then the merged file) and its segment
read once more; the merge runs when the rolled part is committed (C6), in the sink
subtask. Readers see only `part-...` files, each whole and each row once.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raystream._storage import LocalStorage, Storage
from raystream.connectors.files.names import ROLLED_PARQUET
from raystream.connectors.files.rows import arrow_row, concat, joined_schema, table_of
from raystream.errors import SinkError

_HINT = "give every record the same fields and types"


@dataclass(frozen=True)
class ParquetPart:
    """An open or rolled Parquet part: its final name and its segments (name, rows), in order."""

    final: str
    segments: tuple[tuple[str, int], ...]
    directory: str = ""  # where it is (a run from a savepoint may write elsewhere): "" is the writer's

    @property
    def rows(self) -> int:
        return sum(rows for _, rows in self.segments)

    @property
    def length(self) -> int:
        return self.rows


def parquet_table(parts: list[list[Any] | pa.RecordBatch], where: str = "a Parquet file") -> pa.Table:
    """Micro-batches as one table. Columns are the union of the rows' fields, by name, each
    of a type that holds all its values (`rows.table_of`); SinkError naming `where` when no
    type does."""
    tables = [pa.Table.from_batches([p]) if isinstance(p, pa.RecordBatch) else table_of([arrow_row(r) for r in p], where)
              for p in parts if len(p)]
    return tables[0] if len(tables) == 1 else concat(tables, where)


def parquet_bytes(parts: list[list[Any] | pa.RecordBatch], where: str = "a Parquet file") -> bytes:
    """Micro-batches as one Parquet file (`parquet_table`)."""
    buf = io.BytesIO()
    pq.write_table(parquet_table(parts, where), buf)
    return buf.getvalue()


def parquet_files(parts: list[list[Any] | pa.RecordBatch], where: str = "a Parquet file") -> list[bytes]:
    """Micro-batches as Parquet files: one per group of `schema_groups`."""
    return [parquet_bytes(group, where) for group in schema_groups(parts)]


def schema_groups(parts: list[list[Any] | pa.RecordBatch]) -> list[list[list[Any] | pa.RecordBatch]]:
    """The micro-batches in groups that make one table where no value changes type
    (`rows.joined_schema`), in order within each, each group in the order it first came.
    A window step fires windows whose keys came in key columns of other types as a batch
    per kind of key ("5" and 5, "a" and b"a"), which one table would merge or refuse, and
    a file each keeps apart. Lists of rows stay together (their types are found from all
    their values, permissively, as ever) and join the first Arrow group their table
    joins, else make a group of their own."""
    arrow = [p for p in parts if isinstance(p, pa.RecordBatch)]
    if len(arrow) == len(parts) and len({b.schema for b in arrow}) <= 1 or not arrow:
        return [parts]  # one schema, or rows only: one table, as ever
    groups: list[tuple[pa.Schema, list[list[Any] | pa.RecordBatch]]] = []
    for batch in arrow:
        for i, (schema, group) in enumerate(groups):
            joined = joined_schema(schema, batch.schema)
            if joined is not None:
                groups[i] = (joined, group)
                group.append(batch)
                break
        else:
            groups.append((batch.schema, [batch]))
    rows = [p for p in parts if not isinstance(p, pa.RecordBatch)]
    if rows:
        schema = parquet_table(rows).schema  # SinkError, as ever, for rows no table holds
        home = next((g for s, g in groups if joined_schema(s, schema) is not None), None)
        if home is None:
            groups.insert(0, (schema, rows))
        else:
            home[:] = [p for p in parts if any(p is q for q in home) or any(p is r for r in rows)]
    return [group for _, group in groups]


class ParquetPartWriter:
    """One open Parquet part (steps 1-3); the same interface as `parts.PartWriter`, `size`
    counting the bytes of its segments."""

    def __init__(self, storage: Storage, staged: str, final: str, opened_at: float, rows_per_file: int,
                 where: str = "a Parquet part"):
        self.final = final
        self.opened_at = opened_at
        self.size = 0
        self._storage = storage
        self._stem = staged.removesuffix(ROLLED_PARQUET).removesuffix(".parquet")
        self._rows_per_file = rows_per_file
        self._buffer: list[list[Any] | pa.RecordBatch] = []
        self._buffered = 0
        self._segments: list[tuple[str, int]] = []
        self._where = where
        self._schema: pa.Schema | None = None  # of every segment: they all have the same
        #: Rows of another schema than the segments': not in this part, they start the next
        #: one (the writer rolls this part first), so that a merge never casts.
        self.carry: list[pa.RecordBatch] = []

    def write(self, batch: list[Any] | pa.RecordBatch) -> None:
        if self.carry:  # the part rolls before it takes more: later rows follow the carried ones
            self.carry.extend(parquet_table([batch], self._where).to_batches())
            return
        self._buffer.append(batch)
        self._buffered += batch.num_rows if isinstance(batch, pa.RecordBatch) else len(batch)
        if self._buffered >= self._rows_per_file:
            self._flush()

    def _flush(self) -> None:
        if not self._buffered or self.carry:
            return
        name = f"{self._stem}-s{len(self._segments):06d}.parquet"
        groups = schema_groups(self._buffer)
        if len(groups) == 1:
            table = parquet_table(self._buffer, self._where)  # SinkError now if these rows make no one table
        else:
            # batches no one table holds as they are: the rows of the segments' schema (or
            # the first group's) are this part's, the others start the next parts
            tables = [parquet_table(group, self._where) for group in groups]
            mine = next((i for i, t in enumerate(tables) if self._schema is not None and t.schema.equals(self._schema)), 0)
            table = tables[mine]
            self.carry = [b for i, t in enumerate(tables) if i != mine for b in t.to_batches()]
            self._buffered = table.num_rows
        if self._schema is not None and not table.schema.equals(self._schema):
            # Widening across segments could fail only at the merge, after the checkpoint
            # that recorded them completed: another schema is another part.
            self.carry, self._buffer, self._buffered = table.to_batches() + self.carry, [], 0
            return
        schema = table.schema
        buf = io.BytesIO()
        pq.write_table(table, buf)
        data = buf.getvalue()
        self._storage.put(name, data)
        self._schema = schema
        self._segments.append((name, self._buffered))
        self.size += len(data)
        self._buffer, self._buffered = [], 0

    def persist(self, checkpoint_id: int) -> ParquetPart:
        self._flush()
        return ParquetPart(self.final, tuple(self._segments), self._storage.uri())

    def close(self) -> ParquetPart:
        return self.persist(0)

    def covers(self, part: Any) -> bool:
        """Whether `part` (the last persisted description) holds every row written."""
        return isinstance(part, ParquetPart) and not self._buffered and part.segments == tuple(self._segments)


def merged(storage: Storage, segments: tuple[tuple[str, int], ...], where: str) -> bytes:
    """The segments, in order, as one Parquet file; FileNotFoundError when one is gone.
    The segments of a part share one schema (`ParquetPartWriter` rolls at another), so
    nothing is cast here and nothing can fail after the checkpoint that recorded them."""
    datas = [storage.get(name) for name, _ in segments]
    schemas = [pq.read_schema(pa.BufferReader(d)) for d in datas]
    if any(not s.equals(schemas[0]) for s in schemas):  # a writer rolls at a new schema: never here
        raise SinkError(f"the segments of {where} differ in schema: {[str(s) for s in schemas]}")
    buf = io.BytesIO()
    writer = pq.ParquetWriter(buf, schemas[0])
    try:
        for data in datas:
            writer.write_table(pq.read_table(pa.BufferReader(data)))
    finally:
        writer.close()
    return buf.getvalue()


def final_rows(storage: Storage, name: str) -> int | None:
    """The rows of the Parquet file `name`, None when there is none."""
    try:
        if isinstance(storage, LocalStorage):
            return pq.read_metadata(storage._path(name)).num_rows
        return pq.read_metadata(pa.BufferReader(storage.get(name))).num_rows
    except FileNotFoundError:
        return None


def commit_parquet_part(storage: Storage, part: ParquetPart) -> None:
    """Step 4: make `part` visible as recorded, idempotently."""
    rows = final_rows(storage, part.final)
    if rows is None:
        storage.put(part.final, merged(storage, part.segments, storage.uri(part.final)))
    elif rows < part.rows:
        raise FileNotFoundError(2, f"it holds {rows} rows where the checkpoint recorded {part.rows}",
                                storage.uri(part.final))
    elif rows > part.rows:  # committed after more segments were added: their rows are replayed
        cut_back(storage, part.final, part.rows)
    storage.delete([name for name, _ in part.segments])


def cut_back(storage: Storage, name: str, rows: int) -> None:
    """Replace the Parquet file `name` by its first `rows` rows (> 0), written whole."""
    table = pq.read_table(pa.BufferReader(storage.get(name))).slice(0, rows)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.put(name, buf.getvalue())


def adopt_parquet_part(storage: Storage, part: ParquetPart, target: Storage, name: str) -> None:
    """Step 5: `part` of another run, in `storage`; `name`: the new run's file in
    `target` for a merge of its recorded segments. Idempotent."""
    for _ in range(2):  # the other run may commit it (and delete its segments) meanwhile
        rows = final_rows(storage, part.final)
        if rows is not None:
            if rows < part.rows:
                raise FileNotFoundError(2, f"it holds {rows} of the {part.rows} rows recorded", storage.uri(part.final))
            return
        if target.list(name):
            return  # merged before
        try:
            data = merged(storage, part.segments, storage.uri(part.final))
        except FileNotFoundError:
            continue
        target.put(name, data)
        return
    raise FileNotFoundError(2, "neither it nor all its segments exist", storage.uri(part.final))
