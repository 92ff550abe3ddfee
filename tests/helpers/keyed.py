"""Feeding keyed operators without Ray: a batch of (key, value, time) in, pairs out."""
from __future__ import annotations

from typing import Any

from raystream._runtime.transport.batch import KeyedBatch, Timed, untimed


def feed(op: Any, records: list[tuple[Any, Any, int]]) -> list[tuple[Any, Any]]:
    """records: (key, value, time ms) as one timed batch into `op.process`; returns the
    (key, output) pairs it emitted."""
    if not records:
        return []
    keys, values, times = (list(x) for x in zip(*records))
    out = op.process(Timed(KeyedBatch(keys, values), times))
    if not len(out):
        return []
    inner, _ = untimed(out)
    return list(zip(inner.keys, inner.values))
