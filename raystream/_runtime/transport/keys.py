"""Stable key hashing: a key maps to the same key group in every process and every run.

Python's `hash()` is salted per process, so it cannot route keys between actors. Key
groups are the unit of keyed state: a checkpoint stores state per key group and can be
restored at another parallelism by handing each subtask a different range of groups.
"""
from __future__ import annotations

import math
import struct
import zlib
from typing import Any, Iterator

import numpy as np

from raystream.errors import RaystreamError


class UnsupportedKeyError(RaystreamError, TypeError):
    """A key_by function returned a key that cannot be hashed stably."""

    def __init__(self, message: str, key: Any = None):
        super().__init__(message)
        self.key = key


def stable_hash(key: Any) -> int:
    """A 32-bit hash of `key` that is equal in every process; equal keys hash equal (1 == 1.0 == True)."""
    if isinstance(key, str):
        return zlib.crc32(key.encode("utf-8", "surrogatepass"))
    if isinstance(key, int):  # bool included: True == 1 must land in the same group
        return zlib.crc32(key.to_bytes((key.bit_length() + 8) // 8 or 1, "little", signed=True))
    if isinstance(key, float):
        if key.is_integer():
            return stable_hash(int(key))
        if math.isnan(key):
            raise UnsupportedKeyError("NaN cannot be a key: it is not equal to itself", key)
        return zlib.crc32(struct.pack("<d", key))
    if isinstance(key, bytes):
        return zlib.crc32(b"b" + key)
    if key is None:
        return 0x9E3779B9
    if isinstance(key, tuple):
        h = zlib.crc32(b"t%d" % len(key))
        for item in key:
            h = zlib.crc32(stable_hash(item).to_bytes(4, "little"), h)
        return h
    raise UnsupportedKeyError(
        f"key {key!r} of type {type(key).__name__} cannot be routed; a key_by function must return "
        "str, bytes, int, float, bool, None or a tuple of those", key)


def key_group(key: Any, max_parallelism: int) -> int:
    return stable_hash(key) % max_parallelism


def subtask_of_group(group: int, parallelism: int, max_parallelism: int) -> int:
    """Key groups map to subtasks in contiguous ranges."""
    return group * parallelism // max_parallelism


def groups_of_subtask(subtask: int, parallelism: int, max_parallelism: int) -> range:
    """The key groups that `subtask_of_group` sends to `subtask`."""
    start = -(-subtask * max_parallelism // parallelism)
    stop = -(-(subtask + 1) * max_parallelism // parallelism)
    return range(start, stop)


class _Routes(dict):
    """key -> (target subtask, the key as first seen); a missing key is routed and cached."""

    __slots__ = ("miss",)

    def __missing__(self, key: Any) -> tuple[int, Any]:
        return self.miss(key)


class KeyRouter:
    """Maps keys to target subtasks, caching per key because keys repeat.

    The cache also interns keys: equal keys in a batch become one object, which pickle
    then writes once per message.
    """

    __slots__ = ("_parallelism", "_max_parallelism", "_cache")

    _CACHE_LIMIT = 1 << 16

    def __init__(self, parallelism: int, max_parallelism: int):
        self._parallelism = parallelism
        self._max_parallelism = max_parallelism
        self._cache = _Routes()
        self._cache.miss = self._miss

    def _miss(self, key: Any) -> tuple[int, Any]:
        group = key_group(key, self._max_parallelism)  # raises a clear error for a bad key
        routed = (subtask_of_group(group, self._parallelism, self._max_parallelism), key)
        if len(self._cache) >= self._CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = routed
        return routed

    def targets_of_hashes(self, hashes: np.ndarray) -> np.ndarray:
        """The target subtask of each `stable_hash` value, as `_miss` routes a key."""
        groups = hashes.astype(np.int64) % self._max_parallelism
        return groups * self._parallelism // self._max_parallelism

    def target(self, key: Any) -> int:
        return self.route_all([key])[0][0]

    def route_all(self, keys: list[Any]) -> list[tuple[int, Any]]:
        """(target subtask, interned key) for each key."""
        try:
            return list(self.routes(keys))
        except TypeError:
            self.name_unhashable(keys)
            raise

    def routes(self, keys: list[Any]) -> Iterator[tuple[int, Any]]:
        """`route_all` as an iterator, for a caller that goes through them once: a loop in
        C that calls Python only on a miss (keys repeat, so most are cached). An
        unhashable key raises TypeError when reached; `name_unhashable` names it."""
        return map(self._cache.__getitem__, keys)

    @staticmethod
    def name_unhashable(keys: list[Any]) -> None:
        """Raise UnsupportedKeyError for the first key that cannot be hashed (a list, or a
        tuple holding one), if there is one."""
        for k in keys:
            try:
                hash(k)
            except TypeError:
                stable_hash(k)  # raises UnsupportedKeyError for k or the bad part of it
