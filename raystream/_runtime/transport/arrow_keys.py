"""Keys of Arrow record batches, computed per distinct key instead of per row.

A columnar keyed stream (`key_by(step_id, "col")` or `key_by(step_id, ("a", "b"))`) must
put every row in exactly the key group the per-record path would give it, so that
checkpoints, rescaling (B4) and jobs mixing both paths agree on who owns a key. The key
of a row is what the per-record path would see: a column's Python value (`to_pylist`),
a tuple of them for several columns, None for a null. Routing hashes integer, boolean and
string keys in numpy, as `stable_hash` would (arrow_hash.py); other keys are made in
Python, and hashed with `stable_hash`, once per distinct key of a batch; rows only get an
index into them (`dictionary_encode`, vectorized). The split into one sub-batch per target
subtask is a numpy argsort and one Arrow `take` per target.

Arrow tells apart values that are one key in Python: -0.0 and 0.0 of a float column,
and a value a dictionary column's dictionary holds twice. Such codes are merged, so each
distinct key has exactly one code (`_canonical`), and steps that group by the codes
(sessions, joins, `aggregate` and windows over float or dictionary keys) see a key once.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from raystream._arrow_values import python_values
from raystream._runtime.transport.arrow_hash import key_hashes, whole
from raystream._runtime.transport.keys import KeyRouter


@dataclass
class DistinctKeys:
    """The distinct keys of a batch and, for each row, the index of its key in `keys`."""

    keys: list[Any]
    rows: np.ndarray  # int64, one per row

    def per_row(self) -> list[Any]:
        """The key of every row (the per-record path's keys)."""
        return list(map(self.keys.__getitem__, self.rows.tolist()))


def distinct_keys(batch: pa.RecordBatch, columns: tuple[str, ...]) -> DistinctKeys:
    """The Python keys of `batch` by `columns`: one column's value, or the tuple of several."""
    codes, values = zip(*(_encode(batch.column(c)) for c in columns))
    if len(columns) == 1:
        return DistinctKeys(values[0], codes[0])
    combined = codes[0]
    for code, vals in zip(codes[1:], values[1:]):
        # renumbered after each column, so the combined code stays below rows * (values + 1)
        combined = _renumber(combined * len(vals) + code)
    found = int(combined.max()) + 1 if len(combined) else 0
    sample = np.empty(found, dtype=np.int64)
    sample[combined] = np.arange(len(combined))  # any row of a key stands for all of them
    parts = [[vals[i] for i in code[sample].tolist()] for code, vals in zip(codes, values)]
    return DistinctKeys(list(zip(*parts)), combined)


def _encode(column: pa.Array) -> tuple[np.ndarray, list[Any]]:
    """(code per row, Python value per code) of one column; a null is the value None."""
    if isinstance(column, pa.ChunkedArray):
        column = whole(column)
    try:
        encoded = column if pa.types.is_dictionary(column.type) else column.dictionary_encode()
    except pa.ArrowNotImplementedError:  # lists, structs: per row, and the router names the bad key
        return np.arange(len(column), dtype=np.int64), python_values(column)
    dictionary, indices = encoded.dictionary, encoded.indices.cast(pa.int64())
    if pa.types.is_dictionary(column.type):
        dictionary, indices = _used(dictionary, indices)
    values = python_values(dictionary)
    if indices.null_count:
        indices = indices.fill_null(len(values))
        values.append(None)
    codes = indices.to_numpy(zero_copy_only=False)
    if may_split_keys(column.type):
        return _canonical(codes, values)
    return codes, values


def _used(dictionary: pa.Array, indices: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Only the entries of a dictionary column's dictionary that its rows use, and the rows'
    indices into those: an unused entry is no key of the batch, so it is neither made nor
    routed (a datetime nobody holds would be refused)."""
    codes = indices.drop_null().to_numpy(zero_copy_only=False)
    used = np.bincount(codes, minlength=len(dictionary)) > 0
    if used.all():
        return dictionary, indices
    renumbered = (np.cumsum(used) - 1)[indices.fill_null(0).to_numpy(zero_copy_only=False)]
    mask = indices.is_null().to_numpy(zero_copy_only=False) if indices.null_count else None
    return dictionary.filter(pa.array(used)), pa.array(renumbered, type=pa.int64(), mask=mask)


def may_split_keys(kind: pa.DataType) -> bool:
    """Whether Arrow may put rows of one Python key in two groups of a column of `kind`
    (-0.0 and 0.0; a dictionary holding a value twice)."""
    return pa.types.is_dictionary(kind) or pa.types.is_floating(kind)


def _canonical(codes: np.ndarray, values: list[Any]) -> tuple[np.ndarray, list[Any]]:
    """One code per distinct Python value: codes of equal values (-0.0 and 0.0, a value a
    dictionary repeats) become the first one's, renumbered 0..k-1 in order of the values."""
    try:
        first: dict[Any, int] = {}
        remap = [first.setdefault(v, len(first)) for v in values]
    except TypeError:  # an unhashable value: the router refuses the key by name
        return codes, values
    if len(first) == len(values):
        return codes, values
    return np.asarray(remap, dtype=np.int64)[codes], list(first)


def _renumber(codes: np.ndarray) -> np.ndarray:
    """Codes 0..k-1 for the k distinct values of `codes`, hashed (no sort)."""
    return pa.array(codes).dictionary_encode().indices.to_numpy(zero_copy_only=False).astype(np.int64)


def arrow_targets(batch: pa.RecordBatch, columns: tuple[str, ...], router: KeyRouter) -> np.ndarray:
    """The target subtask of every row: keys of integer, boolean and string columns hashed
    in numpy (arrow_hash.py), others made and routed per distinct key (`row_targets`)."""
    hashes = key_hashes(batch, columns)
    if hashes is None:
        return row_targets(distinct_keys(batch, columns), router)
    return router.targets_of_hashes(hashes)


def row_targets(keys: DistinctKeys, router: KeyRouter) -> np.ndarray:
    """The target subtask of every row, each distinct key routed once by the per-record
    path's router (which raises UnsupportedKeyError for a key it cannot hash)."""
    routed = router.route_all(keys.keys)
    return np.fromiter(map(operator.itemgetter(0), routed), dtype=np.int64, count=len(routed))[keys.rows]


def split_rows(targets: np.ndarray, n: int) -> list[np.ndarray]:
    """For each of `n` targets, the indexes of the rows that go to it, in row order."""
    order = np.argsort(targets, kind="stable")  # stable: a key's rows keep their order
    bounds = np.searchsorted(targets[order], np.arange(n + 1))
    return [order[bounds[i]:bounds[i + 1]] for i in range(n)]


def take_rows(batch: pa.RecordBatch, rows: np.ndarray) -> pa.RecordBatch:
    """The rows of `batch` at `rows`, as a batch of its own (not a slice, which would
    carry the whole batch's buffers into every message)."""
    return batch.take(pa.array(rows, type=pa.int64()))
