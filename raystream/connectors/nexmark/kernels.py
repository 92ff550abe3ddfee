"""The building blocks of the columnar generator (columnar.py): records.py's random stream,
draws and prices over numpy arrays, and Arrow arrays made from numpy buffers without copies.

Two things shape this code. Arrays as long as the batch come from Arrow's memory pool
(`new`): it keeps the pages a batch freed for the next one, where the C library's malloc
hands them back to the system once a dropped batch leaves the top of its heap free, and
faulting them in again took as long as the arithmetic. And numpy operations write into
arrays given with `out=` wherever a temporary as long as the batch would be made.
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from raystream.connectors.nexmark.records import price

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_SMALL = 4096  # bytes: a smaller array comes from malloc (cheaper to get, and not what faults)
_TIE = 1e-4  # a price whose value lies this close to x.5 is recomputed in Python (see prices)

Validity = tuple["pa.Buffer | None", int]  # an Arrow validity bitmap (None: no nulls) and its null count
ALL_VALID: Validity = (None, 0)


def new(shape: int | tuple[int, ...], dtype: type | np.dtype) -> np.ndarray:
    """An uninitialised array, in Arrow's memory pool unless it is small."""
    dtype = np.dtype(dtype)
    size = (shape if isinstance(shape, int) else math.prod(shape)) * dtype.itemsize
    if size < _SMALL:
        return np.empty(shape, dtype)
    return np.frombuffer(pa.allocate_buffer(size), dtype).reshape(shape)


def mix(source: np.ndarray, out: np.ndarray, scratch: np.ndarray, add: np.uint64 = _GOLDEN) -> np.ndarray:
    """splitmix64 of each element of source into out, as records.py's _mix (uint64 arithmetic
    wraps modulo 2**64 as that masks); `add` is the golden gamma, or the gamma plus an offset."""
    np.add(source, add, out=out)
    for shift, mul in ((30, _MUL1), (27, _MUL2)):
        np.right_shift(out, shift, out=scratch)
        np.bitwise_xor(out, scratch, out=out)
        np.multiply(out, mul, out=out)
    np.right_shift(out, 31, out=scratch)
    return np.bitwise_xor(out, scratch, out=out)


def where(mask: np.ndarray, yes: np.ndarray, no: np.ndarray) -> np.ndarray:
    """np.where(mask, yes, no) into `no`, with `yes` as scratch (np.where would allocate)."""
    np.subtract(yes, no, out=yes)
    np.multiply(yes, mask, out=yes)
    return np.add(no, yes, out=no)


class Streams:
    """The random streams of a batch's events (records.py's _Random), drawn in step.

    `draw()` is every event's next number. `optional(unless)` is too, but the streams of the
    events where `unless` holds stay where they are (they skipped it), so events on different
    branches keep to their own positions. A returned number is overwritten by the next call.

    After `keep(at, always, draws)` the events `at` (a mask of them: `always`) take every
    optional draw, and the next `draws` numbers drawn at those rows are kept in `kept` (one
    row each): the rows' own streams, unbranched, which their kind then reads alone. So one
    mix over the batch serves every kind, whichever kind's branches drive the stream."""

    def __init__(self, state: np.ndarray):
        self.state, self.scratch = state, new(len(state), np.uint64)
        self.at: np.ndarray | None = None
        self.always: np.ndarray | None = None
        self.kept = np.empty((0, 0), np.uint64)
        self._drawn = 0

    def keep(self, at: np.ndarray, always: np.ndarray, draws: int) -> None:
        """Keep the next `draws` numbers at the rows `at` (mask: `always`), one row each."""
        self.at, self.always, self.kept, self._drawn = at, always, new((draws, len(at)), np.uint64), 0

    def draw(self) -> np.ndarray:
        return self._keep(mix(self.state, self.state, self.scratch))

    def optional(self, unless: np.ndarray) -> np.ndarray:
        taken = np.logical_not(unless, out=new(len(unless), np.bool_))
        if self.always is not None:
            taken |= self.always
        number = mix(self.state, new(len(self.state), np.uint64), self.scratch)
        np.copyto(self.scratch, number)
        where(taken, self.scratch, self.state)
        return self._keep(number)

    def _keep(self, number: np.ndarray) -> np.ndarray:
        if self.at is not None and self._drawn < len(self.kept):
            number.take(self.at, out=self.kept[self._drawn], mode="clip")
            self._drawn += 1
        return number


def chain(state: np.ndarray, count: int) -> np.ndarray:
    """The `count` numbers that follow `state` in each stream, one row each."""
    out = new((count, len(state)), np.uint64)
    scratch = new(len(state), np.uint64)
    for row in out:
        state = mix(state, row, scratch)
    return out


def below(state: np.ndarray, bound: int | np.ndarray) -> np.ndarray:
    """state % bound as int64: records.py's `below` (every bound the configuration allows
    is >= 1). `bound` may be an array of per-row or per-element bounds."""
    out = new(state.shape, np.uint64)
    if isinstance(bound, np.ndarray):
        np.remainder(state, bound.view(np.uint64), out=out)  # bounds >= 1: the view is exact
    elif bound & (bound - 1) == 0:  # a power of two: a mask is the remainder, and cheaper
        np.bitwise_and(state, bound - 1, out=out)
    else:
        np.remainder(state, bound, out=out)
    return out.view(np.int64)  # below 2**63: exact


def hot(state: np.ndarray, ratio: int) -> np.ndarray:
    """records.py's `below(ratio) > 0`: the event goes to a hot id."""
    return np.not_equal(below(state, ratio), 0, out=new(len(state), np.bool_))


def uniform(state: np.ndarray) -> np.ndarray:
    out = new(state.shape, np.float64)
    return np.multiply(state >> np.uint64(11), 2.0**-53, out=out)  # exact, as (state >> 11) / 2**53


def prices(state: np.ndarray) -> np.ndarray:
    """records.py's price(uniform()) of each number (of any shape), as int64.

    numpy's `power` may be a SIMD version whose last bit differs from the C library's `pow`
    that Python uses; that changes the rounded price only when the value lies within a few
    units in the last place of x.5, so those (about one in 10,000) are recomputed in Python."""
    p = uniform(state)
    p *= 6.0
    np.power(10.0, p, out=p)
    p *= 100.0
    rounded = np.rint(p, out=new(p.shape, np.float64))
    out = new(p.shape, np.int64)
    np.copyto(out, rounded, casting="unsafe")
    np.subtract(p, rounded, out=p)
    np.abs(p, out=p)
    if p.size and p.max() > 0.5 - _TIE:
        for i in zip(*np.nonzero(p > 0.5 - _TIE)):
            out[i] = price((int(state[i]) >> 11) / (1 << 53))
    return out


def valid(mask: np.ndarray) -> Validity:
    """An Arrow validity bitmap of `mask`, and its null count."""
    nulls = int(mask.size - np.count_nonzero(mask))
    return (None if nulls == 0 else pa.py_buffer(np.packbits(mask, bitorder="little"))), nulls


def int64s(values: np.ndarray, validity: Validity = ALL_VALID) -> pa.Array:
    return pa.Array.from_buffers(pa.int64(), len(values), [validity[0], pa.py_buffer(values)],
                                 null_count=validity[1])


def struct(kind: pa.StructType, length: int, validity: Validity, children: list[pa.Array]) -> pa.StructArray:
    return pa.Array.from_buffers(kind, length, [validity[0]], null_count=validity[1], children=children)


def spread(kind: pa.StructType, children: list[np.ndarray | pa.Array], at: np.ndarray, length: int) -> pa.StructArray:
    """A struct of `length` rows: row at[i] is row i of `children` (int64 arrays, or Arrow
    strings without nulls), the others null. Integers are put in place (zeros under the
    nulls, so that equal batches have equal bytes); strings keep their bytes and get new
    offsets. (Arrow's `take` on the struct costs several times as much.)"""
    rows = len(at)
    if rows == length:
        return struct(kind, length, ALL_VALID, [int64s(v) if isinstance(v, np.ndarray) else v for v in children])
    if rows == 0:
        return pa.nulls(length, kind)
    mask = np.zeros(length, np.bool_)
    mask[at] = True
    validity = valid(mask)
    seen = np.cumsum(mask, dtype=np.int32, out=new(length, np.int32))  # rows of the kind up to each, itself included
    out = []
    for child in children:
        if isinstance(child, np.ndarray):
            values = new(length, np.int64)
            values.fill(0)
            values[at] = child
            out.append(int64s(values, validity))
            continue
        _, offsets, data = child.buffers()
        offsets = np.frombuffer(offsets, np.int32)[child.offset:child.offset + rows + 1]
        moved = new(length + 1, np.int32)
        moved[0] = offsets[0]
        offsets.take(seen, out=moved[1:], mode="clip")
        out.append(pa.Array.from_buffers(pa.string(), length, [validity[0], pa.py_buffer(moved), data],
                                         null_count=validity[1]))
    return struct(kind, length, validity, out)
