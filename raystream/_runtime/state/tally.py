"""The audit's running tallies (see raystream.audit): a count of records and the sum of
their ids' 64-bit hashes, kept per source and sink subtask and summed per checkpoint."""
from __future__ import annotations

import hashlib
from typing import Any, Callable

_MASK = (1 << 64) - 1


def id_digest(ids: list[Any]) -> int:
    """The order-independent digest of a batch of ids (sum of 64-bit BLAKE2 hashes)."""
    total = 0
    for i in ids:
        total += int.from_bytes(hashlib.blake2b(repr(i).encode(), digest_size=8).digest(), "little")
    return total & _MASK


def add_digests(a: int, b: int) -> int:
    """Two digests of disjoint sets of ids: the digest of their union."""
    return (a + b) & _MASK


class Tally:
    """A running count and digest of one step's records in one subtask."""

    __slots__ = ("count", "digest", "_id")

    def __init__(self, id_fn: Callable[[Any], Any] | None, count: int = 0, digest: int = 0):
        self._id = id_fn
        self.count = count
        self.digest = digest

    def add(self, records: list[Any]) -> None:
        self.count += len(records)
        if self._id is not None:
            fn = self._id
            self.digest = add_digests(self.digest, id_digest([fn(r) for r in records]))

    def state(self) -> tuple[int, int]:
        return (self.count, self.digest)


def checkpoint_totals(snapshot_audits: list[dict[str, list[int]]]) -> dict[str, tuple[int, int]]:
    """(count, digest) of every source and of every sink of one checkpoint, from the
    audit entries (`"source:<step>"`/`"sink:<step>"` -> (count, digest)) of its snapshots."""
    totals = {"source": (0, 0), "sink": (0, 0)}
    for entries in snapshot_audits:
        for side, (count, digest) in entries.items():
            kind = side.split(":", 1)[0]
            c, d = totals[kind]
            totals[kind] = (c + count, add_digests(d, digest))
    return totals
