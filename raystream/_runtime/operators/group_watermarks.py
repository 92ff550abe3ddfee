"""The watermarks a window step's key groups had before a rescale, where they were ahead of
the step's (R4; docs/event_time.md, "State, checkpoints and rescaling").

A rescale restores a window step at the oldest watermark of the old subtasks it takes keys
from, so that no record on time for its window before is late after. The key groups of an
old subtask whose watermark was ahead keep that watermark here, until the step's passes
it: a record of such a key group is judged by it (late, or an update of a window that
fired), as the old subtask would have judged it, so a window it had already dropped is
not opened and fired a second time by a replayed record.

A batch is split by its rows' watermarks (one part per distinct watermark, each key's rows
in one part and in their order), and the step runs each part with its watermark as the
step's; the outputs are joined again. This happens only while such watermarks are held,
which is between a rescale and the step's watermark reaching the old ones. Each part is
then a batch of its own for the error policy too: a columnar step's batch that fails as a
whole fails part by part.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pyarrow as pa

from raystream._runtime.transport.arrow_keys import distinct_keys, take_rows
from raystream._runtime.transport.batch import ArrowKeyed, Batches, KeyedBatch, Timed, as_keyed, batch_len, parts, untimed
from raystream._runtime.transport.keys import key_group


def by_watermark(batch: Any, groups: dict[int, int], watermark: int,
                 max_parallelism: int) -> list[tuple[int, Any]]:
    """`batch` split into (watermark, part): each row's is the greater of `watermark` and
    its key group's in `groups`. A batch whose rows all have `watermark` is one part."""
    def mark_of(key: Any) -> int:
        return max(watermark, groups.get(key_group(key, max_parallelism), watermark))

    inner, times = untimed(batch)
    if isinstance(inner, ArrowKeyed):
        distinct = distinct_keys(inner.batch, inner.key_columns)
        marks = np.fromiter(map(mark_of, distinct.keys), dtype=np.int64, count=len(distinct.keys))[distinct.rows]
        values = np.unique(marks)
        if len(values) == 1:
            return [(int(values[0]), batch)]
        array = None if times is None else np.asarray(times, dtype=np.int64)
        parts = []
        for mark in values.tolist():
            rows = np.flatnonzero(marks == mark)
            part: Any = ArrowKeyed(take_rows(inner.batch, rows), inner.key_columns)
            parts.append((mark, part if array is None else Timed(part, array[rows])))
        return parts
    try:
        kb = as_keyed(inner)
    except ValueError:
        return [(watermark, batch)]  # the step refuses it as it refuses any such batch
    by_mark: dict[int, list[int]] = {}
    for i, key in enumerate(kb.keys):
        by_mark.setdefault(mark_of(key), []).append(i)
    if len(by_mark) == 1:
        return [(next(iter(by_mark)), batch)]
    listed = None if times is None else list(times)
    out = []
    for mark, indexes in by_mark.items():
        part = KeyedBatch([kb.keys[i] for i in indexes], [kb.values[i] for i in indexes])
        out.append((mark, part if listed is None else Timed(part, [listed[i] for i in indexes])))
    return out


def joined(outputs: list[Any]) -> Any:
    """The outputs of a batch's parts as one batch (of one kind: the step's output), or
    as `Batches` where their Arrow rows differ in schema."""
    outputs = [p for o in outputs for p in parts(o) if batch_len(p)]
    if len(outputs) <= 1:
        return outputs[0] if outputs else []
    inners, times = zip(*map(untimed, outputs))
    first = inners[0]
    if isinstance(first, pa.RecordBatch):
        if any(not b.schema.equals(first.schema) for b in inners[1:]):
            # kept apart, never cast into one: a window's batches per kind of key would merge
            # keys (an int key into a float column, a str into a binary one: review 48c)
            return Batches(outputs)
        table = pa.Table.from_batches(list(inners))
        inner: Any = table.combine_chunks().to_batches()[0]
    elif isinstance(first, KeyedBatch):
        inner = KeyedBatch([k for b in inners for k in b.keys], [v for b in inners for v in b.values])
    else:
        inner = [r for b in inners for r in b]
    if times[0] is None:
        return inner
    if isinstance(times[0], np.ndarray):
        return Timed(inner, np.concatenate(times))
    return Timed(inner, [t for part in times for t in part])


def run_parts(op: Any, batch: Any, process: Callable[[Any], Any]) -> Any:
    """`process` over `batch` split by the watermarks of `op.group_watermarks`, with each
    part's watermark as `op.watermark` while it runs."""
    step = op.watermark
    outputs = []
    try:
        for mark, part in by_watermark(batch, op.group_watermarks, step, op.max_parallelism):
            op.watermark = mark
            outputs.append(process(part))
    finally:
        op.watermark = step
    return joined(outputs)


def ahead_of(groups: dict[int, int], watermark: int) -> dict[int, int]:
    """Those of `groups` still ahead of `watermark`."""
    return {g: mark for g, mark in groups.items() if mark > watermark}
