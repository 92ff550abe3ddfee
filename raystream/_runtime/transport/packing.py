"""How micro-batches cross between subtasks: pickled here with the standard library's C
pickler (protocol 5) and handed to Ray as bytes, which Ray passes without pickling
again. Ray would otherwise use cloudpickle, whose per-object hook runs for every record
that is not a builtin type (a NamedTuple, a dataclass): twice the time for such batches.

Records whose classes the standard pickler cannot name (defined in `__main__` or a job
file that was run, not imported) fail at once on this side, and such a batch goes as
an object instead, which Ray cloudpickles by value as before.
"""
from __future__ import annotations

import pickle
from typing import Any


def pack(batch: Any) -> Any:
    """`batch` as bytes when the standard pickler can write it, else `batch` itself."""
    try:
        return pickle.dumps(batch, protocol=5)
    except Exception:  # whatever the standard pickler cannot write, cloudpickle may
        return batch


def unpack(payload: Any) -> Any:
    """A batch from what `pack` gave (batches themselves are never bytes)."""
    return pickle.loads(payload) if type(payload) is bytes else payload
