"""A window join over Arrow: `left.join(id, right, Tumbling(...) or Sliding(...))` on two
streams keyed by columns emits, when a window fires, every pair of a left and a right
row of each key and window (an inner join) as one Arrow batch (docs/guide/columnar.md).

The rows wait in keyed state, per key `{(start, end): [(left rows, right rows), emitted]}`
as the per-record join keeps its values (operators/windows.py, `TimedWindows`: the same
timers, firing, watermark and late output; rows too late for every window go to
`.late`, as Arrow rows of their side). Per batch of one side, windows are assigned
vectorized, the pairs sorted by (key, window) and taken once; each (key, window) then
gets a slice, in Python once per distinct (key, window). At the fire, the pairs of every
due window are built with numpy (the left rows repeated, the right ones tiled) and taken
in one go. A window that fired (kept for the allowed lateness) emits the new pairs of the
rows a batch adds at once, as the batch's output: the output is every pair once.

Buffered rows are Arrow, never Python rows: `Rows` holds a side's slices of one window
and pickles as its columns' buffers (bytes) with the schema's IPC bytes, one object
shared by all windows of that schema, so a snapshot holds the schema once and about the
rows' Arrow size per window (C3 pickles the state at once).

All rows a side buffers have one schema, the side's: a batch whose schema differs (a
column of type null in an all-null batch, int32 for int64, a column more or less, the
columns in another order) is unified with it permissively (`pa.unify_schemas`), and the
batch, and when the side's schema widens every row the side buffers, are cast to the
result. This runs in the batch's error handling, before anything is buffered: a batch
whose schema does not unify (a string column for an int one) or whose values do not fit
fails under the job's error policy, and the state stays as it was.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from raystream._runtime.operators.columnar import explained
from raystream._runtime.operators.state_kinds import PER_RECORD, check_key_columns, meta_kind, refused
from raystream._runtime.operators.window_rows import Fired, LateRows, assign
from raystream._runtime.operators.windows import TimedWindows
from raystream._runtime.plan.failure import RecordFailure
from raystream._runtime.transport.arrow_keys import distinct_keys
from raystream._runtime.transport.batch import ArrowKeyed, Timed, time_array, untimed
from raystream.errors import RestoreError
from raystream.graph import Step
from raystream.windows import ArrowJoin, join_column_names

logger = logging.getLogger(__name__)

_SCHEMA_BYTES: dict[pa.Schema, bytes] = {}  # one bytes object per schema: pickle writes it once
_SCHEMAS: dict[bytes, pa.Schema] = {}


def _schema_bytes(schema: pa.Schema) -> bytes:
    found = _SCHEMA_BYTES.get(schema)
    if found is None:
        found = _SCHEMA_BYTES[schema] = schema.serialize().to_pybytes()
    return found


def _schema(data: bytes) -> pa.Schema:
    found = _SCHEMAS.get(data)
    if found is None:
        found = _SCHEMAS[data] = pa.ipc.read_schema(pa.py_buffer(data))
        _SCHEMA_BYTES.setdefault(found, data)
    return found


def _column_state(array: pa.Array) -> Any:
    """A compact column (no offset, no parent's buffers) as its buffers' bytes; a nested
    or dictionary column as pyarrow pickles it."""
    if array.type.num_fields or pa.types.is_dictionary(array.type):
        return array
    return (array.null_count, [None if b is None else b.to_pybytes() for b in array.buffers()])


def _column(kind: pa.DataType, length: int, state: Any) -> pa.Array:
    if isinstance(state, pa.Array):
        return state
    null_count, buffers = state
    return pa.Array.from_buffers(kind, length, [None if b is None else pa.py_buffer(b) for b in buffers],
                                 null_count)


def _load_rows(schema: bytes, length: int, columns: list[Any]) -> "Rows":
    kind = _schema(schema)
    arrays = [_column(f.type, length, c) for f, c in zip(kind, columns)]
    return Rows([pa.RecordBatch.from_arrays(arrays, schema=kind)])


class Rows:
    """One side's rows of one (key, window): slices of the batches they came in, made one
    compact batch when read or pickled."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[pa.RecordBatch] | None = None):
        self.parts = parts or []

    def __len__(self) -> int:
        return sum(p.num_rows for p in self.parts)

    def append(self, part: pa.RecordBatch) -> None:
        self.parts.append(part)

    def batch(self) -> pa.RecordBatch:
        """The rows as one batch."""
        return self.parts[0] if len(self.parts) == 1 else self.compact()

    def compact(self) -> pa.RecordBatch:
        """The rows as one batch with buffers of their own (a slice's would hold its whole batch)."""
        table = pa.Table.from_batches(self.parts)
        arrays = [pa.concat_arrays(c.chunks) for c in table.columns]
        self.parts = [pa.RecordBatch.from_arrays(arrays, schema=table.schema)]
        return self.parts[0]

    def __reduce__(self) -> tuple[Any, ...]:
        if not self.parts:
            return (Rows, ())
        batch = self.compact()
        return (_load_rows, (_schema_bytes(batch.schema), batch.num_rows, [_column_state(c) for c in batch.columns]))


class ArrowJoinOp(TimedWindows):
    """Every pair of a left and a right row per key and window, as Arrow."""

    def __init__(self, step: Step):
        super().__init__(step)
        spec: ArrowJoin = step.arrow
        self.spec = spec
        # the inputs of each side (a side may be a union of several), by step id
        sides = step.sides or (0, 1)
        self.sides = ([i for i, s in zip(step.inputs, sides) if s == 0], [i for i, s in zip(step.inputs, sides) if s == 1])
        self.what = f"window join on {', '.join(spec.left_keys)} = {', '.join(spec.right_keys)}"
        self.late_rows = LateRows()
        # each side's schema, that of every row it buffers (None: not known yet, or after a
        # restore, when it is found from the rows restored)
        self.schemas: list[pa.Schema | None] = [None, None]

    def state_meta(self) -> dict[str, Any]:
        """Says a columnar join wrote the state, so that no step of another kind takes it;
        its sides' key columns (a key is their value, or tuple) and inputs, in order."""
        return {"op": "join", "keys": list(self.spec.left_keys), "right_keys": list(self.spec.right_keys),
                "left": self.sides[0], "right": self.sides[1]}

    def restore_meta(self, metas: list[Any]) -> None:
        """Refuse the state of a step of another kind: a columnar one's, or a per-record
        step's kept with a TTL. A join's own checkpoints from before 0.8.1 hold no meta
        and are taken (as is a per-record step's without a TTL, which cannot be told from
        them)."""
        for meta in metas:
            if meta_kind(meta) not in (None, PER_RECORD, "join"):
                raise refused(self.step_id, meta, "a columnar join step")
            if not isinstance(meta, dict):
                continue
            # keyed by other columns, or the sides swapped: metas before 0.8.2 do not say
            check_key_columns(self.step_id, meta.get("keys"), list(self.spec.left_keys))
            check_key_columns(self.step_id, meta.get("right_keys"), list(self.spec.right_keys))
            left, right = meta.get("left") or [], meta.get("right") or []
            if set(left) & set(self.sides[1]) or set(right) & set(self.sides[0]):
                raise RestoreError(
                    f"step {self.step_id!r}: the checkpoint's state joined {left} (left) with {right} (right), and "
                    f"this step joins {self.sides[0]} with {self.sides[1]}: an input changed sides, and a window "
                    "holds each side's rows as that side's; restore with the join's original sides, give this step "
                    "another id, or start without resume")

    def restore(self, state: dict[Any, Any], watermark: int | None) -> None:
        super().restore(state, watermark)
        self.schemas = [None, None]
        for side in (0, 1):  # merged by a rescale, a side's rows must still make one table, as a fire makes
            rows = [held for _, _, held in self._held(side)]
            held = list({r.parts[0].schema: None for r in rows})
            if len(held) > 1 and not _one_table([b for r in rows for b in r.parts]):
                raise RestoreError(
                    f"step {self.step_id!r}: the old subtasks merged into this one held rows of the "
                    f"{('left', 'right')[side]} side whose columns no one schema holds ("
                    f"{'; '.join(', '.join(f'{f.name}: {f.type}' for f in h) for h in held)}); a side keeps "
                    "one schema (each old subtask did, its keys reaching it in columns of one type): restore at "
                    "the parallelism the checkpoint was taken at, or cast the columns to one type before the join "
                    "and start without resume")

    def _process(self, batch: Any) -> Any:
        raise AssertionError("a join takes batches with their side (process_side)")

    def _process_side(self, batch: Any, side: int) -> Any:
        inner, times = untimed(batch)
        if not isinstance(inner, ArrowKeyed) or times is None:
            raise RecordFailure(self.step_id, "<batch>", TypeError(
                "a columnar window join takes Arrow rows keyed by columns, with event time; got "
                f"{type(inner).__name__}{'' if times is not None else ' without event time'}"))
        rows = inner.batch
        self.records_in += rows.num_rows
        times = time_array(times)
        try:
            keyed, schema, recast = self._unified(inner, side)
            late, windows = self._windows(keyed, times)
        except Exception as exc:  # the batch fails as a whole; nothing was buffered
            return self._batch_failed(inner, explained(
                exc, f"{self.what} failed on a batch of the {('left', 'right')[side]} side with columns "
                     f"{', '.join(rows.schema.names)}"))
        self.schemas[side] = schema
        for key, entry, rows_now in recast:  # the side's schema widened: its rows buffered before, cast
            entry[0] = (rows_now, entry[0][1]) if side == 0 else (entry[0][0], rows_now)
            self.changed.add(key)  # I1
        now = Fired()  # the new pairs of windows that had fired (rows within the lateness)
        for key, w, part in windows:
            held = self.state.get(key)
            if held is None:
                held = self.state[key] = {}
            entry = held.get(w)
            if entry is None:
                entry = held[w] = [(Rows(), Rows()), False]
                self._schedule(key, w)
            if self._has_fired(w, entry):
                other = entry[0][1 - side]
                if len(other):
                    now.add(key, w, (part, other.batch()) if side == 0 else (other.batch(), part), True)
                entry[1] = True  # fired: a restore cleans it up, never fires it (R4)
            entry[0][side].append(part)
            self.changed.add(key)  # I1
        if late is not None:
            self.late_records += self.late_rows.add(keyed, times, late)
        return self._fired(now)

    def _unified(self, keyed: ArrowKeyed, side: int) -> tuple[ArrowKeyed, pa.Schema, list[tuple[Any, list, Rows]]]:
        """(the batch in the side's schema, that schema, and (key, entry, its rows of the
        side in it) for each window whose rows must be cast to it). Nothing changes yet."""
        known = self.schemas[side]
        buffered = [known] if known is not None else list({
            held.parts[0].schema: None for _, _, held in self._held(side)})  # after a restore: what it holds
        schema = keyed.batch.schema
        if buffered == [schema] or not buffered:
            return keyed, schema, []
        try:
            unified = pa.unify_schemas(buffered + [schema], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise TypeError(f"its schema does not unify with the schema of the rows the side holds "
                            f"({', '.join(f'{f.name}: {f.type}' for f in buffered[0])}): {exc}") from exc
        if schema != unified:
            keyed = ArrowKeyed(_conform(keyed.batch, unified), keyed.key_columns)
        if all(b == unified for b in buffered):  # the side's rows have it already: no need to look
            return keyed, unified, []
        recast = [(key, entry, Rows([_conform(p, unified) for p in held.parts]))
                  for key, entry, held in self._held(side) if held.parts[0].schema != unified]
        return keyed, unified, recast

    def _held(self, side: int) -> Any:
        """(key, entry, the side's Rows) of every window holding rows of the side."""
        for key, windows in self.state.items():
            for entry in windows.values():
                held = entry[0][side]
                if held.parts:
                    yield key, entry, held

    def _windows(self, keyed: ArrowKeyed, times: np.ndarray) -> tuple[np.ndarray | None, list[tuple[Any, Any, Any]]]:
        """(rows late for every window, or None; (key, window, its rows) for each (key,
        window) of the batch). Nothing changes yet."""
        assigned = assign(self.assigner, times)
        pairs, starts, late = assigned.rows, assigned.starts, None
        on_time = starts + (assigned.size - 1 + self.lateness) > self.watermark
        if not on_time.all():
            pairs, starts = pairs[on_time], starts[on_time]
            late = np.bincount(pairs, minlength=len(times)) == 0
        if not len(pairs):
            return late, []
        distinct = distinct_keys(keyed.batch, keyed.key_columns)
        codes = distinct.rows[pairs]
        order = np.lexsort((starts, codes))  # stable: a window's rows stay in arrival order
        taken = keyed.batch.take(pa.array(pairs[order]))
        codes, starts = codes[order], starts[order]
        cuts = np.flatnonzero(np.r_[True, (codes[1:] != codes[:-1]) | (starts[1:] != starts[:-1])]).tolist()
        size, keys = assigned.size, distinct.keys
        return late, [(keys[codes[a]], (int(starts[a]), int(starts[a]) + size), taken.slice(a, b - a))
                      for a, b in zip(cuts, cuts[1:] + [len(order)])]

    # --- output -------------------------------------------------------------------------

    def _collector(self) -> Fired:
        return Fired()

    def _emit(self, key: Any, w: tuple[int, int], entry: list, out: Fired) -> None:
        left, right = entry[0]
        if len(left) and len(right):
            out.add(key, w, (left.batch(), right.batch()), entry[1])
        entry[1] = True

    def _fired(self, out: Fired) -> Any:
        if not out.keys:
            return []
        lefts = [held[0] for held in out.entries]
        rights = [held[1] for held in out.entries]
        n_left = np.array([b.num_rows for b in lefts], dtype=np.int64)
        n_right = np.array([b.num_rows for b in rights], dtype=np.int64)
        pairs = n_left * n_right
        # pair p of window e: left row p // n_right[e], right row p % n_right[e] (left-major, as per record)
        window = np.repeat(np.arange(len(pairs)), pairs)
        within = np.arange(int(pairs.sum())) - np.repeat(np.cumsum(pairs) - pairs, pairs)
        left_at = within // n_right[window] + (np.cumsum(n_left) - n_left)[window]
        right_at = within % n_right[window] + (np.cumsum(n_right) - n_right)[window]
        left = _concat(lefts).take(pa.array(left_at))
        right = _concat(rights).take(pa.array(right_at))
        left_names, right_names = join_column_names(left.column_names, right.column_names, self.spec.left_keys,
                                                    self.spec.right_keys, self.spec.suffixes)
        arrays = [left.column(k) for k in self.spec.left_keys] + out.window_columns(pairs)
        arrays += [left.column(c) for c, _ in left_names] + [right.column(c) for c, _ in right_names]
        names = list(self.spec.left_keys) + ["window_start", "window_end"] + [n for _, n in left_names + right_names]
        batch = pa.RecordBatch.from_arrays([a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
                                            for a in arrays], names=names)
        self.records_out += batch.num_rows
        return Timed(batch, np.repeat(np.asarray(out.ends, dtype=np.int64) - 1, pairs))

    def take_late_batches(self) -> list[Any]:
        return self.late_rows.take()


def _concat(batches: list[pa.RecordBatch]) -> pa.Table:
    """One table of a side's rows of several windows. They have the side's schema; rows
    restored from a checkpoint of raystream before that may not, and are unified here."""
    return pa.concat_tables([pa.Table.from_batches([b]) for b in batches], promote_options="permissive")


def _one_table(batches: list[pa.RecordBatch]) -> bool:
    """Whether the rows make one table as `_concat` makes it: the schemas unify and every
    value fits (an int64 column and a uint64 one holding 2**63 unify, but do not concat)."""
    try:
        _concat(batches)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return False
    return True


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """`batch` as `schema`: its columns by name in the schema's order, cast (safely: a
    value that does not fit fails), null where it lacks one."""
    arrays = []
    for f in schema:
        i = batch.schema.get_field_index(f.name)
        column = pa.nulls(batch.num_rows, f.type) if i < 0 else batch.column(i)
        arrays.append(column if column.type == f.type else column.cast(f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
