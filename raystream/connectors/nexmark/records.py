"""The per-record generator: event n as a `Person`, `Auction` or `Bid` tuple.

Every event is a pure function of (seed, n): its random numbers are a counter-based
splitmix64 stream that starts from (seed, n), so any event can be made on its own, in any
order, in any process. The columnar generator (columnar.py) computes the same function over
arrays of event numbers; this one stays the definition, and what per-record jobs read.
"""
from __future__ import annotations

from typing import Iterator

from raystream.connectors.nexmark.config import NexmarkConfig
from raystream.connectors.nexmark.model import (
    AUCTION_ID_LEAD, CHANNELS, CITIES, FIRST_AUCTION_ID, FIRST_CATEGORY_ID, FIRST_NAMES, FIRST_PERSON_ID,
    HOT_AUCTION_RATIO, HOT_BIDDER_RATIO, HOT_SELLER_RATIO, LAST_NAMES, NUM_CATEGORIES, PERSON_ID_LEAD, PROPORTION,
    SEED_MULTIPLIER, STATES, TOTAL, URLS, Auction, Bid, Person, expiry_bound)

__all__ = ["event", "events"]

_MASK = (1 << 64) - 1


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
        self.state = _mix(seed * SEED_MULTIPLIER + n)

    def below(self, bound: int) -> int:
        self.state = _mix(self.state)
        return self.state % bound if bound > 0 else 0

    def uniform(self) -> float:
        self.state = _mix(self.state)
        return (self.state >> 11) / (1 << 53)


def _last_person(n: int) -> int:
    epoch, offset = divmod(n, TOTAL)
    return epoch * PROPORTION[0] + min(offset, PROPORTION[0] - 1)


def _last_auction(n: int) -> int:
    epoch, offset = divmod(n, TOTAL)
    if offset < PROPORTION[0]:
        epoch, offset = epoch - 1, PROPORTION[1] - 1
    elif offset >= PROPORTION[0] + PROPORTION[1]:
        offset = PROPORTION[1] - 1
    else:
        offset -= PROPORTION[0]
    return epoch * PROPORTION[1] + offset


def _next_person(c: NexmarkConfig, n: int, rnd: _Random) -> int:
    people = _last_person(n) + 1
    active = min(people, c.active_people)
    return people - active + rnd.below(active + PERSON_ID_LEAD)


def _next_auction(c: NexmarkConfig, n: int, rnd: _Random) -> int:
    last = _last_auction(n)
    low = max(last - c.in_flight_auctions, 0)
    return low + rnd.below(last - low + 1 + AUCTION_ID_LEAD)


def price(u: float) -> int:
    """A price in cents from a uniform draw u in [0, 1): log-uniform from $1 to $1,000,000."""
    return round(10 ** (u * 6) * 100)


def _price(rnd: _Random) -> int:
    return price(rnd.uniform())


def event(c: NexmarkConfig, n: int) -> Person | Auction | Bid:
    """Event number n."""
    rnd = _Random(c.seed, n)
    t = c.base_time + int(n * 1000 / c.event_rate)
    if c.out_of_order:
        t -= int(rnd.uniform() * c.out_of_order * 1000)
    offset = n % TOTAL
    if offset < PROPORTION[0]:
        pid = _last_person(n) + FIRST_PERSON_ID
        name = f"{FIRST_NAMES[rnd.below(len(FIRST_NAMES))]} {LAST_NAMES[rnd.below(len(LAST_NAMES))]}"
        return Person(pid, name, f"{name.split()[0].lower()}{pid}@example.com",
                      f"{rnd.below(10_000):04d} {rnd.below(10_000):04d} {rnd.below(10_000):04d} {rnd.below(10_000):04d}",
                      CITIES[rnd.below(len(CITIES))], STATES[rnd.below(len(STATES))], t)
    if offset < PROPORTION[0] + PROPORTION[1]:
        aid = _last_auction(n) + FIRST_AUCTION_ID
        if rnd.below(c.hot_seller_ratio) > 0:
            seller = (_last_person(n) // HOT_SELLER_RATIO) * HOT_SELLER_RATIO
        else:
            seller = _next_person(c, n, rnd)
        initial = _price(rnd)
        expires = t + 1 + rnd.below(expiry_bound(c))
        return Auction(aid, f"item {aid}", f"auction {aid}", initial, initial + _price(rnd), t, expires,
                       seller + FIRST_PERSON_ID, FIRST_CATEGORY_ID + rnd.below(NUM_CATEGORIES))
    if rnd.below(c.hot_auction_ratio) > 0:
        auction = (_last_auction(n) // HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO
    else:
        auction = _next_auction(c, n, rnd)
    if rnd.below(c.hot_bidder_ratio) > 0:
        bidder = (_last_person(n) // HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO + 1
    else:
        bidder = _next_person(c, n, rnd)
    channel = rnd.below(len(CHANNELS))
    return Bid(auction + FIRST_AUCTION_ID, bidder + FIRST_PERSON_ID, _price(rnd), CHANNELS[channel], URLS[channel], t)


def events(config: NexmarkConfig) -> Iterator[Person | Auction | Bid]:
    """Every event of a bounded configuration, in event-number order."""
    if config.events is None:
        raise ValueError("events() needs a bounded NexmarkConfig (events=N)")
    return (event(config, n) for n in range(config.events))
