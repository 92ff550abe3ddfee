"""Channels between subtask actors: micro-batches, barriers and end-of-stream, in order.

Sender side: an `OutputEdge` partitions a step's output over the downstream subtasks
(forward, rebalance or by key), buffers records per target and flushes a buffer when
it holds `batch_size` records or has waited `linger` seconds. Each target is an
`OutputChannel` that numbers its messages and keeps at most `max_in_flight` of them
unacknowledged: the push call returns only once the receiver has processed the
message, so a slow consumer stalls its producers (backpressure).

Receiver side: an `Inbox` restores each channel's order by sequence number and hands
out messages round-robin over the channels that are not blocked. A blocked channel
keeps its messages queued, which is how barrier alignment holds back one input.
"""
from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import pyarrow as pa

from raystream._runtime.transport.arrow_keys import arrow_targets, split_rows, take_rows
from raystream._runtime.transport.batch import (ArrowKeyed, KeyedBatch, Timed, Times, as_keyed, as_records, batch_len,
                                                time_array, time_list, timed, untimed)
from raystream._runtime.transport.keys import KeyRouter
from raystream._runtime.plan.physical import EdgeKind
from raystream._runtime.transport.packing import pack

BATCH, BARRIER, END, WATERMARK = 0, 1, 2, 3


class OutputChannel:
    """Messages to one input channel of one downstream actor.

    Records wait in `buffer` (or, on a keyed edge, in `keys`/`values`) until a flush;
    on a stream with event time their times wait in `times`.
    """

    def __init__(self, handle: Any, channel: int, max_in_flight: int):
        self.handle = handle
        self.channel = channel
        self.max_in_flight = max_in_flight
        self.seq = 0
        self.in_flight: collections.deque[asyncio.Future] = collections.deque()
        self.max_in_flight_seen = 0
        self.blocked = 0.0  # seconds spent waiting for the receiver (backpressure)
        self.buffer: list[Any] = []
        self.keys: list[Any] = []
        self.values: list[Any] = []
        self.times: list[int] = []
        self.buffer_since = 0.0

    def buffered(self) -> int:
        return len(self.buffer) + len(self.keys)

    async def send(self, kind: int, payload: Any) -> None:
        in_flight = self.in_flight
        while in_flight and in_flight[0].done():
            in_flight.popleft().result()  # re-raises if the receiver died
        if len(in_flight) >= self.max_in_flight:
            started = time.perf_counter()
            while len(in_flight) >= self.max_in_flight:
                await in_flight.popleft()
            self.blocked += time.perf_counter() - started
        in_flight.append(asyncio.ensure_future(self.handle.push.remote(self.channel, self.seq, kind, payload)))
        self.seq += 1
        if len(in_flight) > self.max_in_flight_seen:
            self.max_in_flight_seen = len(in_flight)

    async def flush(self) -> None:
        self.buffer_since = 0.0
        batch: Any = None
        if self.buffer:
            batch, self.buffer = self.buffer, []
        elif self.keys:
            batch, self.keys, self.values = KeyedBatch(self.keys, self.values), [], []
        if batch is None:
            return
        if self.times:
            batch, self.times = Timed(batch, self.times), []
        await self.send(BATCH, pack(batch))

    async def drain(self) -> None:
        while self.in_flight:
            await self.in_flight.popleft()


class OutputEdge:
    """A step's output to all subtasks of one downstream step.

    forward: to the one subtask of the same index; rebalance: whole batches round-robin;
    hash: each record to the subtask that owns its key's key group. Arrow batches go as
    they are, a keyed one split into one Arrow batch per subtask.
    """

    def __init__(self, kind: EdgeKind, channels: list[OutputChannel], batch_size: int, linger: float,
                 max_parallelism: int, late: bool = False):
        self.kind = EdgeKind(kind)
        self.late = late  # carries late records of a window step instead of its results
        self.channels = channels
        self.batch_size = batch_size
        self.linger = linger
        self._next = 0  # rebalance rotation
        self._router = KeyRouter(len(channels), max_parallelism)

    async def emit(self, batch: Any) -> None:
        if not batch_len(batch):
            return
        inner, times = untimed(batch)
        if self.kind is EdgeKind.HASH:
            if isinstance(inner, ArrowKeyed):
                await self._emit_arrow_keyed(inner, times)
            else:
                await self._emit_keyed(as_keyed(inner), time_list(times))
            return
        ch = self.channels[0] if len(self.channels) == 1 else self.channels[self._rotate()]
        if isinstance(inner, (pa.RecordBatch, ArrowKeyed)):  # Arrow goes as is
            await self._send_arrow(ch, batch)
            return
        ch.buffer.extend(as_records(inner))
        if times is not None:
            ch.times.extend(time_list(times))
        await self._after_append(ch)

    async def _emit_keyed(self, batch: KeyedBatch, times: list[int] | None) -> None:
        channels = self.channels
        # Route even to a single channel: a key that cannot be hashed stably must fail
        # the same way at every parallelism, and interning shrinks the message.
        routed = self._router.routes(batch.keys)  # an iterator: no list of routes per batch
        keys = [ch.keys.append for ch in channels]  # bound once per batch, not per record
        values = [ch.values.append for ch in channels]
        try:
            if times is None:
                for (target, key), value in zip(routed, batch.values):
                    keys[target](key)
                    values[target](value)
            else:
                stamps = [ch.times.append for ch in channels]
                for (target, key), value, t in zip(routed, batch.values, times):
                    keys[target](key)
                    values[target](value)
                    stamps[target](t)
        except TypeError:  # an unhashable key: the subtask fails with it (Emitter.send), buffers and all
            self._router.name_unhashable(batch.keys)
            raise
        for ch in channels:
            await self._after_append(ch)

    async def _emit_arrow_keyed(self, keyed: ArrowKeyed, times: Times | None) -> None:
        """Each row to the subtask of its key group, keyed Arrow as it came: the keys are
        hashed in numpy, or made and hashed once per distinct key (arrow_keys.py)."""
        # routed even to a single channel, so a key that cannot be hashed fails at every parallelism
        targets = arrow_targets(keyed.batch, keyed.key_columns, self._router)
        if len(self.channels) == 1:
            await self._send_arrow(self.channels[0], timed(keyed, times))
            return
        stamps = time_array(times)  # times stay an array along Arrow rows
        for ch, rows in zip(self.channels, split_rows(targets, len(self.channels))):
            if len(rows):
                part = ArrowKeyed(take_rows(keyed.batch, rows), keyed.key_columns)
                await self._send_arrow(ch, timed(part, stamps[rows] if stamps is not None else None))

    @staticmethod
    async def _send_arrow(ch: OutputChannel, batch: Any) -> None:
        await ch.flush()  # after what was buffered before it
        await ch.send(BATCH, batch)

    def _rotate(self) -> int:
        i = self._next % len(self.channels)
        self._next += 1
        return i

    async def _after_append(self, ch: OutputChannel) -> None:
        n = ch.buffered()
        if n >= self.batch_size:
            await ch.flush()
        elif n and not ch.buffer_since:
            ch.buffer_since = time.monotonic()

    def next_deadline(self) -> float | None:
        """When the oldest partly filled buffer is due; None when all are empty."""
        times = [ch.buffer_since for ch in self.channels if ch.buffer_since]
        return min(times) + self.linger if times else None

    async def flush_due(self, now: float) -> None:
        for ch in self.channels:
            if ch.buffer_since and ch.buffer_since + self.linger <= now:
                await ch.flush()

    async def flush_all(self) -> None:
        for ch in self.channels:
            await ch.flush()

    async def broadcast(self, kind: int, payload: Any) -> None:
        """Flush every buffer, then send a control message (barrier, end) on every channel."""
        await self.flush_all()
        for ch in self.channels:
            await ch.send(kind, payload)

    async def drain(self) -> None:
        for ch in self.channels:
            await ch.drain()


class Inbox:
    """The input channels of one subtask."""

    def __init__(self, n_channels: int):
        self.n = n_channels
        self._pending: list[dict[int, tuple[int, Any, asyncio.Future]]] = [{} for _ in range(n_channels)]
        self._next_seq = [0] * n_channels
        self._ready: list[collections.deque] = [collections.deque() for _ in range(n_channels)]
        self.blocked: set[int] = set()
        self.max_queued_seen = 0
        self._rr = 0
        self._event = asyncio.Event()

    def put(self, channel: int, seq: int, kind: int, payload: Any) -> asyncio.Future:
        """Queue a message; the returned future resolves when it has been processed."""
        fut = asyncio.get_running_loop().create_future()
        pending = self._pending[channel]
        pending[seq] = (kind, payload, fut)
        ready = self._ready[channel]
        while self._next_seq[channel] in pending:
            ready.append(pending.pop(self._next_seq[channel]))
            self._next_seq[channel] += 1
        queued = len(ready) + len(pending)
        if queued > self.max_queued_seen:
            self.max_queued_seen = queued
        self._event.set()
        return fut

    def _pick(self) -> tuple[int, int, Any, asyncio.Future] | None:
        for i in range(self.n):
            c = (self._rr + i) % self.n
            if self._ready[c] and c not in self.blocked:
                self._rr = c + 1
                kind, payload, fut = self._ready[c].popleft()
                return c, kind, payload, fut
        return None

    async def get(self, timeout: float | None) -> tuple[int, int, Any, asyncio.Future] | None:
        """The next message of an unblocked channel, or None after `timeout` seconds."""
        item = self._pick()
        while item is None:
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), timeout)
            except asyncio.TimeoutError:
                return None
            item = self._pick()
        return item
