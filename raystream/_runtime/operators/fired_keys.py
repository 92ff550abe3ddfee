"""The key columns of the windows a columnar window step fires (operators/columnar_windows.py).

A window step keeps its keys as Python values, and a key column may come in other types
in other batches: "5" and 5, b"a" and "a", 1.5 and 7 are keys of their own, as the
per-record path tells them apart. Fired together, they must come out as themselves:
- each kind of key (the Python types of its values) makes a batch of its own, and a
  column holds one kind;
- a column takes the type the step learned from its batches only where that type holds
  its values as they are: Arrow coerces what it is given (1.5 into an int column is 1,
  b"a" into a string column "a", 0.1 into a float32 one 0.100000001), so any other kind
  is typed as its values say;
- ints of both signs that no integer type holds together (-1 and 2**63) are split by
  the signs of each column's ints.
"""
from __future__ import annotations

import datetime
import decimal
from typing import Any

import numpy as np
import pyarrow as pa

from raystream._runtime.operators.aggregate import typed_array

_FAILS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError)


def key_columns(keys: list[Any], kinds: list[pa.DataType | None]) -> list[tuple[np.ndarray | None, list[pa.Array]]]:
    """The key columns of fired windows (`keys`: a key column's values, or tuples of
    several's; `kinds`: the types learned, per column): [(None, the columns)] when one
    batch holds them all, else [(its rows, its columns)] a batch per kind of key, each
    kind in the order it first fired."""
    one = len(kinds) == 1
    if one:  # keys of one type (not datetimes, whose zones part them): the common case, at C speed
        types = set(map(type, keys)) - {type(None)}
        if len(types) <= 1 and not any(issubclass(t, datetime.datetime) for t in types):
            return _built(keys, None, kinds, one)
    signatures = [_kind(key) if one else tuple(map(_kind, key)) for key in keys]
    groups = _grouped(signatures)
    if len(groups) == 1:
        return _built(keys, None, kinds, one)
    out = []
    for rows in groups:
        out += _built([keys[i] for i in rows], np.asarray(rows, dtype=np.int64), kinds, one)
    return out


def _built(keys: list[Any], rows: np.ndarray | None, kinds: list[pa.DataType | None],
           one: bool) -> list[tuple[np.ndarray | None, list[pa.Array]]]:
    """The columns of keys of one kind; ints no integer type holds together (-1 and
    2**63), split by the signs of each column's ints."""
    try:
        return [(rows, _columns(keys, kinds, one))]
    except _FAILS:
        signs: dict[tuple[bool, ...], list[int]] = {}
        for i, key in enumerate(keys):
            signs.setdefault(tuple(isinstance(v, int) and v < 0 for v in ((key,) if one else key)), []).append(i)
        if len(signs) == 1:
            raise
    at = np.arange(len(keys)) if rows is None else rows
    return [(at[np.asarray(part)], _columns([keys[i] for i in part], kinds, one)) for part in signs.values()]


def _columns(keys: list[Any], kinds: list[pa.DataType | None], one: bool) -> list[pa.Array]:
    if one:
        return [key_array(keys, kinds[0])]
    return [key_array(list(values), kind) for values, kind in zip(zip(*keys), kinds)]


def _kind(value: Any) -> Any:
    """A key column value's kind: its Python type, and for a datetime whether it has a
    zone (a naive one and a zoned one are two keys; None goes with any)."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return type(value), value.tzinfo is None
    return type(value)


def _grouped(signatures: list[Any]) -> list[list[int]]:
    """Rows of one signature each; a key with None (in a column) joins the first group
    that agrees with it on its other columns, or makes one."""
    groups: dict[Any, list[int]] = {}
    for i, signature in enumerate(signatures):
        groups.setdefault(signature, []).append(i)
    if len(groups) == 1:
        return list(groups.values())
    whole = [s for s in groups if s is not None and (not isinstance(s, tuple) or None not in s)]
    out: dict[Any, list[int]] = {s: groups[s] for s in whole}
    for signature, rows in groups.items():
        if signature in out:
            continue
        home = next((s for s in whole if _agrees(signature, s)), None)
        if home is None:
            out[signature] = rows
        else:
            out[home] = sorted(out[home] + rows)
    return list(out.values())


def _agrees(partial: Any, whole: Any) -> bool:
    if partial is None:
        return True
    return isinstance(whole, tuple) and all(p is None or p == w for p, w in zip(partial, whole))


def key_array(values: list[Any], kind: pa.DataType | None) -> pa.Array:
    """A key column of one kind of values: as `kind` where it holds them as they are
    (`holds`), else as they say (restored keys of old subtasks that saw other types)."""
    sample = next((v for v in values if v is not None), None)
    if kind is not None and (sample is None or holds(kind, sample)):
        try:
            typed = typed_array(values, kind)
        except _FAILS:
            pass
        else:
            if not pa.types.is_floating(kind) or kind.bit_width == 64 or typed.to_pylist() == values:
                return typed  # a float32 column holds what a float32 batch gave, not every float
    return typed_array(values, None)


def holds(kind: pa.DataType, value: Any) -> bool:
    """Whether a column of `kind` holds values of `value`'s Python type as they are."""
    if isinstance(value, bool):
        return pa.types.is_boolean(kind)
    if isinstance(value, int):
        return pa.types.is_integer(kind)
    if isinstance(value, float):
        return pa.types.is_floating(kind)
    if isinstance(value, str):
        return pa.types.is_string(kind) or pa.types.is_large_string(kind)
    if isinstance(value, bytes):
        return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind)
    if isinstance(value, datetime.datetime):
        return pa.types.is_timestamp(kind) and (kind.tz is None) == (value.tzinfo is None)
    if isinstance(value, datetime.date):
        return pa.types.is_date(kind)
    if isinstance(value, datetime.time):
        return pa.types.is_time(kind)
    if isinstance(value, datetime.timedelta):
        return pa.types.is_duration(kind)
    if isinstance(value, decimal.Decimal):
        return pa.types.is_decimal(kind)
    return True  # any other value: the type learned, if it takes it
