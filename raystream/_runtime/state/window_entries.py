"""Window state as a snapshot holds it when the step keeps it window-major in Arrow
(operators/window_tables.py): a table with a row per (key, window), and the per-key
layout, `{key: {(start, end): [state, emitted]}}`, made from it only when the snapshot is
read back (changelog.py: a restore, a merge, a checkpoint reader).

Making the per-key layout, and pickling it, costs Python per (key, window): 125 ms of CPU
per 1 s checkpoint of Nexmark q5 on the subtask that holds the windows (35 ms as Arrow),
during which that subtask reads nothing and its inputs back up (docs/benchmarks.md).
Written as Arrow, the snapshot costs a filter and the table's buffers; whoever reads it
pays the Python, off the data path, and gets exactly the layout the step would have
given.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from raystream._arrow_values import python_values


@dataclass
class WindowEntries:
    """Rows of window state: the key columns then one column per partial (`table`), each
    row's window start (`starts`) and whether that window fired (`emitted`)."""

    table: pa.Table
    starts: pa.Array  # int64, a row's window start (ms)
    emitted: pa.Array  # bool, a row's window fired (Arrow, not numpy: a snapshot names no numpy internals)
    size: int  # every window's length (ms)
    key_columns: int
    slots: tuple[int, ...]  # per aggregate, the column (among the partials) of its partial

    def __len__(self) -> int:
        return self.table.num_rows

    def add_to(self, state: dict[Any, Any]) -> dict[Any, Any]:
        """The per-key entries of these rows, into `state` (returned)."""
        n = self.key_columns
        partials = [python_values(self.table.column(n + i)) for i in range(self.table.num_columns - n)]
        values = [partials[slot] for slot in self.slots]
        size = self.size
        for key, start, emitted, states in zip(python_keys(self.table, n), self.starts.to_numpy().tolist(),
                                               self.emitted.to_pylist(), zip(*values)):
            windows = state.get(key)
            if windows is None:
                windows = state[key] = {}
            windows[(start, start + size)] = [states, emitted]
        return state

    def as_dict(self) -> dict[Any, Any]:
        return self.add_to({})


def python_keys(table: pa.Table, key_columns: int) -> list[Any]:
    """Each row's key as the per-record path has it: a value, or the tuple of several."""
    if key_columns == 1:
        return python_values(table.column(0))
    return list(zip(*(python_values(table.column(i)) for i in range(key_columns))))


def per_key(table: Any) -> dict[Any, Any]:
    """A step's state or changes in a snapshot, in the per-key layout (a dict as it is)."""
    return table if isinstance(table, dict) else table.as_dict()
