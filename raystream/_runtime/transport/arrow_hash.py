"""`stable_hash` (keys.py) of Arrow key columns in numpy, for the common key types.

Routing a columnar batch hashes each distinct key of the batch. Made into Python values
and hashed one by one, that costs a few microseconds per distinct key, which is most of
the routing of a batch with many distinct keys (words, user ids). For integer, boolean
and string columns, and tuples of them, the hash is computed here over all distinct
values at once: zlib's CRC-32, table driven, one numpy step per byte position, over the
bytes `stable_hash` would hash. The result must equal `stable_hash` of every key, or
keyed state would move between subtasks (tests/unit/_runtime/transport/test_arrow_hash.py
holds the two equal); any other type returns None, and the caller hashes in Python.
"""
from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa

from raystream._runtime.transport.keys import stable_hash

_NULL = np.uint32(stable_hash(None))
_MAX_BYTES = 64  # strings longer than this are hashed by zlib one by one


def _crc_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for n in range(256):
        c = n
        for _ in range(8):
            c = (0xEDB88320 ^ (c >> 1)) if c & 1 else c >> 1
        table[n] = c
    return table


_TABLE = _crc_table()


def _update(crc: np.ndarray, data: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """zlib.crc32(row's first `lengths[i]` bytes of `data[i]`, crc[i]) for every row;
    `data` is (rows, width) uint8."""
    reg = crc ^ np.uint32(0xFFFFFFFF)
    for i in range(data.shape[1]):
        live = lengths > i
        if not live.any():
            break
        stepped = _TABLE[(reg ^ data[:, i]) & 0xFF] ^ (reg >> np.uint32(8))
        reg = np.where(live, stepped, reg)
    return reg ^ np.uint32(0xFFFFFFFF)


def _ints(values: pa.Array) -> np.ndarray:
    """stable_hash of each int: the CRC of its shortest signed little-endian bytes."""
    unsigned = pa.types.is_unsigned_integer(values.type)
    x = values.cast(pa.uint64() if unsigned else pa.int64()).to_numpy(zero_copy_only=False)
    if unsigned:
        magnitude, negative = x.astype(np.uint64), np.zeros(len(x), dtype=bool)
    else:
        negative = x < 0
        magnitude = np.where(negative, (~x).astype(np.uint64) + np.uint64(1), x.astype(np.uint64))
    # int.to_bytes((bit_length + 8) // 8): one byte more for every 8 bits past the 7th
    lengths = np.ones(len(x), dtype=np.int64)
    for k in range(1, 9):
        lengths += magnitude >= np.uint64(1 << (8 * k - 1))
    data = np.empty((len(x), 9), dtype=np.uint8)
    data[:, :8] = x.astype(np.uint64 if unsigned else np.int64).view(np.uint8).reshape(-1, 8)  # little-endian
    data[:, 8] = np.where(negative, 0xFF, 0)  # the sign byte of a 9-byte key
    return _update(np.zeros(len(x), dtype=np.uint32), data, lengths)


def _strings(values: pa.Array) -> np.ndarray | None:
    """stable_hash of each string: the CRC of its UTF-8 bytes."""
    if pa.types.is_string(values.type):
        offsets_type = np.int32
    elif pa.types.is_large_string(values.type):
        offsets_type = np.int64
    else:
        return None
    values = values.fill_null("")  # nulls are hashed by the caller
    buffers = values.buffers()
    offsets = np.frombuffer(buffers[1], dtype=offsets_type)[values.offset:values.offset + len(values) + 1]
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(1, np.uint8)
    starts, lengths = offsets[:-1].astype(np.int64), np.diff(offsets).astype(np.int64)
    short = lengths <= _MAX_BYTES
    width = int(lengths[short].max()) if short.any() else 0
    if width:
        index = np.minimum(starts[short, None] + np.arange(width), len(data) - 1)
        hashes = np.zeros(len(values), dtype=np.uint32)
        hashes[short] = _update(np.zeros(int(short.sum()), dtype=np.uint32), data[index], lengths[short])
    else:
        hashes = np.full(len(values), zlib.crc32(b""), dtype=np.uint32)
    for i in np.flatnonzero(~short).tolist():  # long strings: rare in keys
        hashes[i] = zlib.crc32(data[starts[i]:starts[i] + lengths[i]].tobytes())
    return hashes


def _values(values: pa.Array) -> np.ndarray | None:
    """stable_hash of each value of an array without nulls' meaning (nulls are set by the caller)."""
    kind = values.type
    if pa.types.is_boolean(kind):
        values = values.cast(pa.uint8())
    if pa.types.is_integer(values.type):
        return _ints(values.fill_null(0) if values.null_count else values)
    return _strings(values)


def whole(column: pa.ChunkedArray) -> pa.Array:
    """The chunks as one array. Dictionary chunks (each with a dictionary of its own) are
    decoded first: Arrow cannot unify dictionaries that hold a null."""
    if column.num_chunks > 1 and pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return column.combine_chunks()


def column_hashes(column: pa.Array) -> np.ndarray | None:
    """stable_hash of each row's Python value of `column`, or None for a type this module
    does not hash (floats, dates, ...: the caller hashes those in Python). Each distinct
    value is hashed once (keys repeat within a batch)."""
    if isinstance(column, pa.ChunkedArray):
        column = whole(column)
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if not (pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_string(kind)
            or pa.types.is_large_string(kind)):
        return None
    encoded = column if pa.types.is_dictionary(column.type) else column.dictionary_encode()
    dictionary = encoded.dictionary
    hashed = np.append(_values(dictionary), _NULL)  # a null row takes the last
    if dictionary.null_count:  # a dictionary's null entry is a null key too
        hashed[:-1][dictionary.is_null().to_numpy(zero_copy_only=False)] = _NULL
    indices = encoded.indices
    if indices.null_count:
        indices = indices.fill_null(len(encoded.dictionary))
    return hashed[indices.to_numpy(zero_copy_only=False)]


def key_hashes(batch: pa.RecordBatch, columns: tuple[str, ...]) -> np.ndarray | None:
    """stable_hash of each row's key: one column's value, or the tuple of several; None
    if a key column has a type this module does not hash."""
    hashes = [column_hashes(batch.column(c)) for c in columns]
    if any(h is None for h in hashes):
        return None
    if len(columns) == 1:
        return hashes[0]
    crc = np.full(batch.num_rows, zlib.crc32(b"t%d" % len(columns)), dtype=np.uint32)
    four = np.full(batch.num_rows, 4, dtype=np.int64)
    for h in hashes:  # each item's hash, 4 bytes little-endian, into the tuple's CRC
        crc = _update(crc, h.astype("<u4").view(np.uint8).reshape(-1, 4), four)
    return crc
