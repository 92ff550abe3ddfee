"""The Nexmark benchmark's event generator, as a partitioned, replayable source.

Nexmark models an online auction: people register (`Person`), open auctions
(`Auction`) and bid on them (`Bid`). The generator follows the standard configuration
of the Nexmark suites (Beam, Flink, RisingWave): out of every 50 events 1 is a person,
3 are auctions and 46 are bids; bids go to a hot auction with ratio 2, hot bidders with
ratio 4, and auctions to hot sellers with ratio 4; ids of new people and auctions grow
with the event number, and bids and auctions refer to recent ones. Event n happens at
`base_time + n / event_rate` seconds, minus an optional out-of-order lag of up to
`out_of_order` seconds.

Every event is a pure function of (seed, n), so any partition can be replayed from any
offset and `events(config)` gives the same events in this process for reference results.
Partition p of P emits events p, p + P, p + 2P, ... in order; its offset is a count.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple

from raystream.errors import JobDefinitionError
from raystream.event_time import EventTime
from raystream.source_api import Pacer, Source, SourcePartition, check_rate

__all__ = ["Auction", "Bid", "NexmarkConfig", "NexmarkSource", "Person", "event_time", "events"]

_PROPORTION = (1, 3, 46)  # person, auction, bid
_TOTAL = sum(_PROPORTION)
_FIRST_PERSON_ID = 1000
_FIRST_AUCTION_ID = 1000
_FIRST_CATEGORY_ID = 10
_NUM_CATEGORIES = 5
_PERSON_ID_LEAD = 10
_AUCTION_ID_LEAD = 10
_HOT_AUCTION_RATIO = 100  # hot auction / seller / bidder ids are multiples of these
_HOT_SELLER_RATIO = 100
_HOT_BIDDER_RATIO = 100
_STATES = ("AZ", "CA", "ID", "OR", "WA", "WY")
_CITIES = ("Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond", "Seattle",
           "Kent", "Cheyenne")
_FIRST_NAMES = ("Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter")
_LAST_NAMES = ("Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris")
_CHANNELS = ("Google", "Facebook", "Baidu", "Apple")
_MASK = (1 << 64) - 1


class Person(NamedTuple):
    id: int
    name: str
    email_address: str
    credit_card: str
    city: str
    state: str
    date_time: int  # milliseconds since the epoch


class Auction(NamedTuple):
    id: int
    item_name: str
    description: str
    initial_bid: int
    reserve: int
    date_time: int
    expires: int
    seller: int
    category: int


class Bid(NamedTuple):
    auction: int
    bidder: int
    price: int
    channel: str
    url: str
    date_time: int


@dataclass(frozen=True)
class NexmarkConfig:
    """`events`: how many (None: unbounded); `event_rate`: events per second of event
    time; `rate`: events per second of wall time over all partitions (None: as fast as
    possible); `hot_*_ratio`: 1 in ratio goes to a random id, the rest to a hot one."""

    events: int | None = 100_000
    partitions: int = 2
    seed: int = 0
    event_rate: float = 10_000.0
    base_time: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z, in milliseconds
    out_of_order: float = 0.0  # seconds
    rate: float | None = None
    hot_auction_ratio: int = 2
    hot_seller_ratio: int = 4
    hot_bidder_ratio: int = 4
    active_people: int = 1000
    in_flight_auctions: int = 100

    def __post_init__(self) -> None:
        if self.events is not None and (not isinstance(self.events, int) or self.events < 0):
            raise JobDefinitionError(f"NexmarkConfig events must be None or an integer >= 0; got {self.events!r}")
        if not isinstance(self.partitions, int) or self.partitions < 1:
            raise JobDefinitionError(f"NexmarkConfig partitions must be an integer >= 1; got {self.partitions!r}")
        if not self.event_rate > 0 or self.out_of_order < 0:
            raise JobDefinitionError("NexmarkConfig event_rate must be > 0 and out_of_order >= 0")
        check_rate("NexmarkConfig", self.rate)

    @classmethod
    def from_env(cls, **defaults: Any) -> "NexmarkConfig":
        """Settings from NEXMARK_EVENTS, NEXMARK_PARTITIONS, NEXMARK_RATE, NEXMARK_SEED and
        NEXMARK_OUT_OF_ORDER, over `defaults` (how the jobs in jobs/nexmark are sized)."""
        env = os.environ
        values = dict(defaults)
        for name, field, cast in (("EVENTS", "events", int), ("PARTITIONS", "partitions", int),
                                  ("RATE", "rate", float), ("SEED", "seed", int),
                                  ("OUT_OF_ORDER", "out_of_order", float)):
            if env.get(f"NEXMARK_{name}"):
                values[field] = cast(env[f"NEXMARK_{name}"])
        return cls(**values)


def _mix(x: int) -> int:
    """splitmix64: a well-spread 64-bit number from any integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class _Random:
    """The random numbers of one event: a counter-based stream from (seed, n)."""

    __slots__ = ("state",)

    def __init__(self, seed: int, n: int):
        self.state = _mix(seed * 0x100000001B3 + n)

    def below(self, bound: int) -> int:
        self.state = _mix(self.state)
        return self.state % bound if bound > 0 else 0

    def uniform(self) -> float:
        self.state = _mix(self.state)
        return (self.state >> 11) / (1 << 53)


def _last_person(n: int) -> int:
    epoch, offset = divmod(n, _TOTAL)
    return epoch * _PROPORTION[0] + min(offset, _PROPORTION[0] - 1)


def _last_auction(n: int) -> int:
    epoch, offset = divmod(n, _TOTAL)
    if offset < _PROPORTION[0]:
        epoch, offset = epoch - 1, _PROPORTION[1] - 1
    elif offset >= _PROPORTION[0] + _PROPORTION[1]:
        offset = _PROPORTION[1] - 1
    else:
        offset -= _PROPORTION[0]
    return epoch * _PROPORTION[1] + offset


def _next_person(c: NexmarkConfig, n: int, rnd: _Random) -> int:
    people = _last_person(n) + 1
    active = min(people, c.active_people)
    return people - active + rnd.below(active + _PERSON_ID_LEAD)


def _next_auction(c: NexmarkConfig, n: int, rnd: _Random) -> int:
    last = _last_auction(n)
    low = max(last - c.in_flight_auctions, 0)
    return low + rnd.below(last - low + 1 + _AUCTION_ID_LEAD)


def _price(rnd: _Random) -> int:
    return round(10 ** (rnd.uniform() * 6) * 100)


def event(c: NexmarkConfig, n: int) -> Person | Auction | Bid:
    """Event number n."""
    rnd = _Random(c.seed, n)
    t = c.base_time + int(n * 1000 / c.event_rate)
    if c.out_of_order:
        t -= int(rnd.uniform() * c.out_of_order * 1000)
    offset = n % _TOTAL
    if offset < _PROPORTION[0]:
        pid = _last_person(n) + _FIRST_PERSON_ID
        name = f"{_FIRST_NAMES[rnd.below(len(_FIRST_NAMES))]} {_LAST_NAMES[rnd.below(len(_LAST_NAMES))]}"
        return Person(pid, name, f"{name.split()[0].lower()}{pid}@example.com",
                      f"{rnd.below(10_000):04d} {rnd.below(10_000):04d} {rnd.below(10_000):04d} {rnd.below(10_000):04d}",
                      _CITIES[rnd.below(len(_CITIES))], _STATES[rnd.below(len(_STATES))], t)
    if offset < _PROPORTION[0] + _PROPORTION[1]:
        aid = _last_auction(n) + _FIRST_AUCTION_ID
        if rnd.below(c.hot_seller_ratio) > 0:
            seller = (_last_person(n) // _HOT_SELLER_RATIO) * _HOT_SELLER_RATIO
        else:
            seller = _next_person(c, n, rnd)
        initial = _price(rnd)
        # auctions last about as long as it takes in_flight_auctions more to open (as in the standard generator)
        horizon = int(c.in_flight_auctions * _TOTAL / _PROPORTION[1] * 1000 / c.event_rate)
        expires = t + 1 + rnd.below(max(horizon * 2, 1))
        return Auction(aid, f"item {aid}", f"auction {aid}", initial, initial + _price(rnd), t, expires,
                       seller + _FIRST_PERSON_ID, _FIRST_CATEGORY_ID + rnd.below(_NUM_CATEGORIES))
    if rnd.below(c.hot_auction_ratio) > 0:
        auction = (_last_auction(n) // _HOT_AUCTION_RATIO) * _HOT_AUCTION_RATIO
    else:
        auction = _next_auction(c, n, rnd)
    if rnd.below(c.hot_bidder_ratio) > 0:
        bidder = (_last_person(n) // _HOT_BIDDER_RATIO) * _HOT_BIDDER_RATIO + 1
    else:
        bidder = _next_person(c, n, rnd)
    channel = _CHANNELS[rnd.below(len(_CHANNELS))]
    return Bid(auction + _FIRST_AUCTION_ID, bidder + _FIRST_PERSON_ID, _price(rnd), channel,
               f"https://www.nexmark.com/{channel.lower()}/item.htm?query=1", t)


def events(config: NexmarkConfig) -> Iterator[Person | Auction | Bid]:
    """Every event of a bounded configuration, in event-number order."""
    if config.events is None:
        raise ValueError("events() needs a bounded NexmarkConfig (events=N)")
    return (event(config, n) for n in range(config.events))


def event_time(max_delay: float | None = None, idle_after: float | None = None) -> EventTime:
    """Event time from `date_time`; `max_delay` defaults to nothing (set it to at least
    the configuration's out_of_order so that no event is late)."""
    return EventTime(lambda e: e.date_time / 1000, max_delay=max_delay or 0, idle_after=idle_after)


class NexmarkSource(Source):
    """Nexmark events in `config.partitions` partitions."""

    def __init__(self, config: NexmarkConfig | None = None):
        self.config = config or NexmarkConfig()

    def list_partitions(self) -> list[str]:
        return [str(p) for p in range(self.config.partitions)]

    def build_partition(self, key: str, resume_state: Any | None, batch_size: int) -> SourcePartition:
        return _NexmarkPartition(self.config, int(key), resume_state or 0, batch_size)


class _NexmarkPartition(SourcePartition):
    def __init__(self, config: NexmarkConfig, partition: int, emitted: int, batch_size: int):
        self.config, self.partition, self.emitted, self.batch_size = config, partition, emitted, batch_size
        self._pacer = Pacer(None if config.rate is None else config.rate / config.partitions, emitted)

    def next_batch(self) -> list[Any] | None:
        c, p, step = self.config, self.partition, self.config.partitions
        first = p + self.emitted * step
        if c.events is not None and first >= c.events:
            return None
        count = self._pacer.allowed(self.emitted, self.batch_size)
        if count <= 0:
            return []
        stop = first + count * step
        if c.events is not None:
            stop = min(stop, c.events)
        batch = [event(c, n) for n in range(first, stop, step)]
        self.emitted += len(batch)
        return batch

    def snapshot(self) -> int:
        return self.emitted

    def next_awake(self) -> float | None:
        return self._pacer.next_awake(self.emitted)
