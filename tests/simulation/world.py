"""The simulated world of tests/simulation: a virtual clock with an event heap, processes
that die, an in-memory Storage, storage calls that land and answer after delays, and
fake actor methods whose calls arrive after a message delay. sim.py runs the protocol on it.
"""
from __future__ import annotations

import asyncio
import heapq
import random
from typing import Any, Awaitable, Callable

from raystream._storage import Storage


class SimFailure(AssertionError):
    """An invariant did not hold, or the job did not finish."""


# --- the world: clock, events, processes -------------------------------------------------


class Proc:
    """A simulated process. Once dead it resumes no coroutine and receives no message."""

    def __init__(self, name: str):
        self.name = name
        self.alive = True
        self.fifo_after = 0.0  # when the newest in-order message to it is delivered


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock is the world's. A timer of the code under test
    (asyncio.sleep(d), wait_for, call_later) waits virtual seconds and fires at its place
    among the world's events; on the wall clock it would fire wherever the machine's
    speed put it, and the schedule would not replay."""

    def __init__(self, world: World):
        super().__init__()
        self._world = world

    def time(self) -> float:
        return self._world.now

    def next_timer(self) -> float | None:
        """When the earliest timer of the loop is due (None: no timer)."""
        return min((h.when() for h in self._scheduled if not h.cancelled()), default=None)


class World:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.log: list[str] = []
        self._hung: list[asyncio.Future] = []
        self.quick = False  # no long delays (while a calm schedule waits for its moment)

    def at(self, delay: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (self.now + max(0.0, delay), self._seq, fn))

    def sleep(self, delay: float, owner: Proc | None = None) -> asyncio.Future:
        """A future resolved `delay` virtual seconds from now; never, if `owner` dies first."""
        fut = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if owner is not None and not owner.alive:
                # Held, never resolved: what waits on it stays suspended for the rest of the
                # schedule. Collected instead, its `finally` blocks would run at the garbage
                # collector's whim (releasing locks, waking waiters): not reproducible.
                self._hung.append(fut)
            elif not fut.done():
                fut.set_result(None)

        self.at(delay, wake)
        return fut

    def delay(self) -> float:
        """Network and storage latency: mostly short, sometimes very long."""
        r = self.rng.random()
        if r < 0.06 and not self.quick:
            return self.rng.uniform(0.5, 4.0)
        return self.rng.uniform(0.0005, 0.03)

    def send(self, to: Proc, fn: Callable[..., Any], *args: Any, fifo: bool = False) -> None:
        """A one-way message: delivered after a delay if `to` is still alive. `fifo`: after
        every earlier fifo message to `to`, as Ray delivers one caller's calls to an actor
        in order (a subtask's calls all come from its coordinator)."""
        delay = self.delay()
        if fifo:
            delay = max(delay, to.fifo_after - self.now)
            to.fifo_after = self.now + delay
        self.at(delay, lambda: to.alive and fn(*args))

    async def run(self, done: Callable[[], bool], limit: float) -> None:
        loop = asyncio.get_running_loop()
        if not isinstance(loop, VirtualLoop):
            raise TypeError("the world runs on its VirtualLoop (World.new_loop)")
        while True:
            while loop._ready:  # noqa: SLF001 - let every runnable coroutine run until it waits
                await asyncio.sleep(0)
            if done():
                return
            timer = loop.next_timer()
            if self._heap and (timer is None or self._heap[0][0] <= timer):
                when, _, fn = heapq.heappop(self._heap)
            elif timer is not None:  # the loop runs the timer on its next pass, now that it is due
                when, fn = timer, None
            else:
                raise SimFailure("no event left and the job has not finished (a deadlock)")
            self.now = max(self.now, when)
            if self.now > limit:
                raise SimFailure(f"the job did not finish within {limit} virtual seconds")
            if fn is not None:
                fn()
            else:
                await asyncio.sleep(0)  # a pass of the loop: it moves the due timer to its ready queue

    def new_loop(self) -> VirtualLoop:
        """The event loop the schedule runs on: its clock is this world's."""
        return VirtualLoop(self)


class SimStorage(Storage):
    """Objects in memory. Latency and lost responses come from `World.blocking`."""

    def __init__(self, world: World):
        self.world = world
        self.objects: dict[str, bytes] = {}
        self.on_manifest: Callable[[str], None] = lambda key: None
        self.published: list[bytes] = []  # every manifest that ever landed (retention can free an id)
        self.fail_rate = 0.0  # how often a snapshot upload fails (the subtask declines the checkpoint)
        self.outage = (0.0, 0.0)  # while the clock is in it, every snapshot upload fails
        self.fail_next: set[str] = set()  # the next snapshot upload whose key ends so fails (keyed_state.py)
        # a manifest write whose writer dies with it in flight: it lands just after the next
        # attempt of its run claims, maybe after that attempt listed the manifests (B5)
        self.in_flight: Callable[[str], bool] | None = None
        self.held: list[tuple[str, bytes]] = []

    def put(self, key: str, data: bytes) -> None:
        if "/snapshots/" in key and (self.outage[0] <= self.world.now < self.outage[1]
                                     or self.fail_rate and self.world.rng.random() < self.fail_rate):
            raise OSError(f"injected: the upload of {key} failed")
        suffix = key.rsplit("/", 1)[-1]
        if "/snapshots/" in key and suffix in self.fail_next:
            self.fail_next.discard(suffix)
            raise OSError(f"injected: the upload of {key} failed while its subtask's state merged")
        self.objects[key] = data

    def put_if_absent(self, key: str, data: bytes, before_publish: Callable[[], None] | None = None) -> bool:
        if key in self.objects:
            return False
        if "/manifests/" in key and self.in_flight is not None and self.in_flight(key):
            self.held.append((key, data))  # its writer is gone; the PUT lands when the next attempt claims
            return True
        self.objects[key] = data
        if "/attempts/" in key:
            for held in [h for h in self.held if h[0].split("/")[0] == key.split("/")[0]]:
                self.held.remove(held)
                self.world.at(self.world.rng.uniform(0.0, 0.15), lambda h=held: self._land(*h))
        if "/manifests/" in key:
            self._land(key, data)
            if self.world.rng.random() < 0.03:  # the storage layer reads a lost answer back; that failed too
                raise TimeoutError(f"the response to the PUT of {key} was lost (it landed)")
        return True

    def _land(self, key: str, data: bytes) -> None:
        if self.objects.setdefault(key, data) is not data:
            return  # the key was taken meanwhile: a conditional put fails
        self.world.log.append(f"{self.world.now:.3f} manifest lands: {key}")
        self.published.append(data)
        self.on_manifest(key)

    def get(self, key: str, limit: int | None = None) -> bytes:
        try:
            return self.objects[key] if limit is None else self.objects[key][:limit + 1]
        except KeyError:
            raise FileNotFoundError(key) from None

    def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.objects.pop(key, None)

    def promote(self, moves: list[tuple[str, str]]) -> None:
        raise NotImplementedError("checkpoint storage never promotes; FileSink writes real files")

    def uri(self, key: str = "") -> str:
        return f"sim://{key}"


def blocking_for(world: World, owner: Proc,
                 hold: Callable[[Callable[..., Any]], Awaitable[None] | None] | None = None) -> Callable[..., Any]:
    """Storage I/O of `owner`: the call lands after one delay and answers after another.
    A write of a process that died meanwhile still lands; its answer goes nowhere.
    `hold(fn)`: what the call waits for on its way, if anything (faults.py, `cut_off`)."""

    async def blocking(fn: Callable[..., Any], *args: Any) -> Any:
        await world.sleep(world.delay())
        held = hold(fn) if hold is not None else None
        if held is not None:
            await held
        try:
            result, error = fn(*args), None
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            result, error = None, exc
        await world.sleep(world.delay(), owner)
        if error is not None:
            raise error
        return result

    return blocking


class Remote:
    """A fake actor method: `.remote(*args)` delivers the call after a message delay."""

    def __init__(self, world: World, proc: Proc, fn: Callable[..., Any]):
        self.world, self.proc, self.fn = world, proc, fn

    def remote(self, *args: Any) -> asyncio.Future:
        self.world.send(self.proc, self.fn, *args, fifo=True)
        fut = asyncio.get_running_loop().create_future()  # the object-store copy: unused here
        return fut
