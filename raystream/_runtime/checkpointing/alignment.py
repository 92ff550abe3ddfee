"""Barrier alignment across the input channels of one subtask: step C2 of the
checkpoint protocol (docs/protocol.md). A small state machine with no Ray in it.

Exactly-once (aligned):
- barrier n arrives on channel c: c is blocked, so its later records wait in the inbox;
- when barrier n has arrived on every channel that has not ended, the subtask
  snapshots (C3), every channel is unblocked and barrier n goes on;
- a barrier newer than the one being aligned abandons the older alignment (its
  checkpoint was aborted); a barrier older than the newest seen is stale and ignored.

At-least-once (unaligned): the same, except that nothing is blocked. The snapshot
still waits for barrier n on every channel, so every record before a barrier is in
it; records after the barrier on channels that delivered it early are in it too and
are replayed after a failure (duplicates, never loss).
"""
from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Aligned:
    """Barrier `checkpoint_id` is complete: snapshot now. `waited` is the alignment time."""

    checkpoint_id: int
    waited: float


class Alignment:
    def __init__(self, n_channels: int, *, aligned: bool):
        self.n_channels = n_channels
        self.aligned = aligned
        self.blocked: set[int] = set()
        self.ended: set[int] = set()
        self.current: int | None = None  # barrier being aligned
        self.last: int = 0  # newest barrier snapshotted (or abandoned)
        self._arrived: set[int] = set()
        self._started = 0.0

    def on_barrier(self, channel: int, checkpoint_id: int) -> Aligned | None:
        if checkpoint_id <= self.last and checkpoint_id != self.current:
            return None  # stale: an older, finished or abandoned checkpoint
        if self.current is None or checkpoint_id > self.current:
            if self.current is not None:  # abandon the older alignment
                self.last = self.current
                self.blocked.clear()
            self.current = checkpoint_id
            self._arrived = set()
            self._started = time.monotonic()
        self._arrived.add(channel)
        if self.aligned:
            self.blocked.add(channel)
        return self._check()

    def on_end(self, channel: int) -> Aligned | None:
        """A channel that ended has delivered every barrier it ever will."""
        self.ended.add(channel)
        self.blocked.discard(channel)
        return self._check() if self.current is not None else None

    def _check(self) -> Aligned | None:
        if len(self._arrived | self.ended) < self.n_channels:
            return None
        done = Aligned(self.current, time.monotonic() - self._started)
        self.last = self.current
        self.current = None
        self.blocked.clear()
        return done
