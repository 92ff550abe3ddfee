"""The columnar generator: the events of a whole array of event numbers at once, as one
Arrow record batch (schema.py), equal field for field to what the per-record generator
(records.py) makes of each number.

It computes the same function with numpy over arrays (kernels.py): splitmix64 in uint64
arithmetic, ids with int64 floor division (as Python's `//`), times and prices in float64
with the same operations in the same order. An event draws a varying number of random
numbers (a hot id takes one draw, a random one two), so the batch's streams advance in step
and an optional draw moves on only the streams of the events that took it. Bids, 92% of
events, drive that stream over every row; persons and auctions take each draw, keep their
rows of it, and resolve their own branches on those few rows. Their struct columns are then
spread to the batch's rows (kernels.spread).

A batch costs a fixed ~0.5 ms of numpy and Arrow calls (about 400 of them) plus ~0.1 µs an
event on one core: about 4M events/s at 4,096 a batch, 8-10M at 16,384 and more.

Event numbers are limited to `MAX_EVENT` (9e12: 28 years at 10,000 events per second): the
event time's `n * 1000 / event_rate` is exact in float64 below 2**53, as Python computes it.
"""
from __future__ import annotations

import operator
from typing import Iterator, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream.connectors.nexmark.config import NexmarkConfig
from raystream.connectors.nexmark.kernels import (
    ALL_VALID, Streams, Validity, below, chain, hot, int64s, mix, new, prices, spread, struct, uniform, valid, where)
from raystream.connectors.nexmark.model import (
    AUCTION_ID_LEAD, CHANNELS, CITIES, FIRST_AUCTION_ID, FIRST_CATEGORY_ID, FIRST_NAMES, FIRST_PERSON_ID,
    HOT_AUCTION_RATIO, HOT_BIDDER_RATIO, HOT_SELLER_RATIO, LAST_NAMES, NUM_CATEGORIES, PERSON_ID_LEAD, PROPORTION,
    SEED_MULTIPLIER, STATES, TOTAL, URLS, expiry_bound)
from raystream.connectors.nexmark.schema import AUCTION, AUCTION_TYPE, BID, BID_TYPE, PERSON, PERSON_TYPE, SCHEMA
from raystream.errors import JobDefinitionError

__all__ = ["MAX_EVENT", "Numbers", "batches", "event_batch"]

#: Event numbers go up to here (exclusive): n * 1000 stays exact in float64.
MAX_EVENT = 2**53 // 1000
#: Event numbers: an integer array, or (start, stop, step) / a range.
Numbers = Union[np.ndarray, Sequence[int], range, tuple[int, int, int]]

_KIND = np.array([PERSON] * PROPORTION[0] + [AUCTION] * PROPORTION[1] + [BID] * PROPORTION[2], dtype=np.int8)
_DRAWS = 6  # numbers a bid draws, at most, and the first ones of an auction's and a person's
# a person's draws, in records.py's order: first name, last name, card (4), city, state
_PERSON_BOUNDS = np.array([len(FIRST_NAMES), len(LAST_NAMES)] + [10_000] * 4 + [len(CITIES), len(STATES)],
                          dtype=np.int64)[:, None]
# the pools strings are drawn from, as one array: a person's four pool strings take one `take`
_POOL_NAMES = {"name": [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES],
               "first_lower": [first.lower() for first in FIRST_NAMES], "city": list(CITIES), "state": list(STATES),
               "channel": list(CHANNELS), "url": list(URLS)}
_POOL = pa.array([text for values in _POOL_NAMES.values() for text in values], pa.string())
_TEXT = {text: pa.scalar(text, pa.string()) for text in ("item", "auction", "@example.com", " ", "")}
_AT = dict(zip(_POOL_NAMES, np.cumsum([0] + [len(v) for v in _POOL_NAMES.values()]).tolist()))


def _numbers(numbers: Numbers) -> np.ndarray:
    """Event numbers as int64, checked to lie in [0, MAX_EVENT)."""
    if isinstance(numbers, (tuple, range)):
        try:
            r = numbers if isinstance(numbers, range) else range(*(operator.index(v) for v in numbers))
        except TypeError:
            raise JobDefinitionError(f"Nexmark event numbers as a tuple are (start, stop, step) integers; "
                                     f"got {numbers!r}") from None
        if len(r) and (min(r[0], r[-1]) < 0 or max(r[0], r[-1]) >= MAX_EVENT):
            raise JobDefinitionError(f"Nexmark event numbers must lie in [0, {MAX_EVENT}); got {r}")
        return _arange(r)
    n = np.asarray(numbers)
    if n.ndim != 1 or not (n.dtype.kind in "iu" or n.size == 0):
        raise JobDefinitionError(f"Nexmark event numbers must be a 1-d integer array or (start, stop, step); "
                                 f"got {n.dtype} of shape {n.shape}")
    if n.size and (n.min() < 0 or n.max() >= MAX_EVENT):
        raise JobDefinitionError(f"Nexmark event numbers must lie in [0, {MAX_EVENT}); got {n.min()}..{n.max()}")
    return n.astype(np.int64, copy=False)


def _arange(r: range) -> np.ndarray:
    n = new(len(r), np.int64)  # r.start + r.step * i, without a temporary as long
    n.fill(r.step)
    if len(n):
        n[0] = r.start
    return np.cumsum(n, out=n)


def _strings(index: np.ndarray, validity: Validity = ALL_VALID) -> pa.Array:
    """_POOL's strings at `index` (int64, with `_AT[pool]` added)."""
    indices = pa.Array.from_buffers(pa.int64(), len(index), [validity[0], pa.py_buffer(index)], null_count=validity[1])
    return pc.take(_POOL, indices)


def _random_id(low: np.ndarray, bound: int | np.ndarray, state: np.ndarray) -> np.ndarray:
    return np.add(below(state, bound), low, out=new(len(low), np.int64))


def _hot_id(last: np.ndarray, ratio: int, plus: int = 0) -> np.ndarray:
    out = np.floor_divide(last, ratio, out=new(len(last), np.int64))
    out *= ratio
    out += plus
    return out


def _people(c: NexmarkConfig, last_person: np.ndarray) -> tuple[np.ndarray, int | np.ndarray]:
    """(lowest id, how many ids) a random person is drawn from, as records.py's _next_person."""
    people = np.add(last_person, 1, out=new(len(last_person), np.int64))
    if not len(people) or people.min() >= c.active_people:  # all but the first events: one bound
        people -= c.active_people
        return people, c.active_people + PERSON_ID_LEAD
    active = np.minimum(people, c.active_people)
    return people - active, active + PERSON_ID_LEAD


def _in_flight(c: NexmarkConfig, last_auction: np.ndarray) -> tuple[np.ndarray, int | np.ndarray]:
    """(lowest id, how many ids) a random auction is drawn from, as records.py's _next_auction."""
    low = np.subtract(last_auction, c.in_flight_auctions, out=new(len(last_auction), np.int64))
    if not len(low) or low.min() >= 0:
        return low, c.in_flight_auctions + 1 + AUCTION_ID_LEAD
    np.maximum(low, 0, out=low)
    return low, last_auction - low + 1 + AUCTION_ID_LEAD


def _bids(c: NexmarkConfig, r: Streams, last_person: np.ndarray, last_auction: np.ndarray, times: np.ndarray,
          is_bid: np.ndarray) -> pa.StructArray:
    """Every row as a bid (records.py's `event` from its first bid draw), null where it is not one."""
    hot_auction = hot(r.draw(), c.hot_auction_ratio)
    low, bound = _in_flight(c, last_auction)
    auction = where(hot_auction, _hot_id(last_auction, HOT_AUCTION_RATIO),
                    _random_id(low, bound, r.optional(unless=hot_auction)))
    hot_bidder = hot(r.draw(), c.hot_bidder_ratio)
    low, bound = _people(c, last_person)
    bidder = where(hot_bidder, _hot_id(last_person, HOT_BIDDER_RATIO, 1),
                   _random_id(low, bound, r.optional(unless=hot_bidder)))
    channel = below(r.draw(), len(CHANNELS))
    price = prices(r.draw())
    auction += FIRST_AUCTION_ID
    bidder += FIRST_PERSON_ID
    validity = valid(is_bid)
    url = np.add(channel, _AT["url"], out=new(len(channel), np.int64))
    channel += _AT["channel"]
    return struct(BID_TYPE, len(times), validity, [
        int64s(auction, validity), int64s(bidder, validity), int64s(price, validity),
        _strings(channel, validity), _strings(url, validity), int64s(times, validity)])


def _auctions(c: NexmarkConfig, draws: np.ndarray, last_person: np.ndarray, last_auction: np.ndarray,
              times: np.ndarray) -> list[np.ndarray | pa.Array]:
    """The fields of auctions from their first _DRAWS numbers (one row each)."""
    hot_seller = hot(draws[0], c.hot_seller_ratio)
    low, bound = _people(c, last_person)
    seller = where(hot_seller, _hot_id(last_person, HOT_SELLER_RATIO), _random_id(low, bound, draws[1]))
    # the random seller's draw is taken only where the seller is not hot: what follows comes later there
    initial, expires, reserve, category = np.where(hot_seller, draws[1:5], draws[2:6])
    initial, reserve = prices(np.stack([initial, reserve]))
    ids = last_auction + FIRST_AUCTION_ID
    text = pc.cast(int64s(ids), pa.string())
    return [ids, pc.binary_join_element_wise(_TEXT["item"], text, _TEXT[" "]),
            pc.binary_join_element_wise(_TEXT["auction"], text, _TEXT[" "]),
            initial, initial + reserve, times, times + 1 + below(expires, expiry_bound(c)),
            seller + FIRST_PERSON_ID, FIRST_CATEGORY_ID + below(category, NUM_CATEGORIES)]


def _persons(draws: np.ndarray, last_person: np.ndarray, times: np.ndarray) -> list[np.ndarray | pa.Array]:
    """The fields of persons from their first _DRAWS numbers (one row each)."""
    draws = np.concatenate([draws, chain(draws[-1], len(_PERSON_BOUNDS) - _DRAWS)])
    first, last, *card, city, state = below(draws, _PERSON_BOUNDS)
    ids = last_person + FIRST_PERSON_ID
    rows = len(ids)
    text = _strings(np.concatenate([first * len(LAST_NAMES) + last + _AT["name"], first + _AT["first_lower"],
                                    city + _AT["city"], state + _AT["state"]]))
    email = pc.binary_join_element_wise(text.slice(rows, rows), pc.cast(int64s(ids), pa.string()),
                                        _TEXT["@example.com"], _TEXT[""])
    return [ids, text.slice(0, rows), email, _card(card), text.slice(2 * rows, rows), text.slice(3 * rows, rows), times]


def _card(parts: list[np.ndarray]) -> pa.Array:
    """f"{a:04d} {b:04d} {c:04d} {d:04d}" of each person's four numbers below 10,000, as
    fixed-width text made in numpy (four casts, pads and a join cost more in Arrow)."""
    text = np.empty((len(parts[0]), 4, 5), np.uint8)
    text[:, :, 4] = ord(" ")
    text[:, :, :4] = np.stack(parts, axis=1)[:, :, None] // np.array([1000, 100, 10, 1]) % 10 + ord("0")
    data = np.ascontiguousarray(text.reshape(-1, 20)[:, :19])
    offsets = np.arange(0, 19 * (len(data) + 1), 19, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def event_batch(config: NexmarkConfig, numbers: Numbers) -> pa.RecordBatch:
    """The events numbered `numbers` (in that order) as one record batch of schema.SCHEMA:
    row i is `event(config, numbers[i])`, field for field."""
    c = config
    n = _numbers(numbers)
    length = len(n)
    scratch = new(length, np.int64)
    # each stream starts at splitmix64(seed * SEED_MULTIPLIER + n), modulo 2**64
    start = np.uint64((c.seed * SEED_MULTIPLIER + 0x9E3779B97F4A7C15) & ((1 << 64) - 1))
    r = Streams(mix(n.view(np.uint64), new(length, np.uint64), scratch.view(np.uint64), add=start))
    epoch = np.floor_divide(n, TOTAL, out=new(length, np.int64))
    offset = np.multiply(epoch, -TOTAL, out=new(length, np.int64))
    offset += n
    kind = _KIND.take(offset, out=new(length, np.int8), mode="clip")
    last_person = np.multiply(epoch, PROPORTION[0], out=new(length, np.int64))
    last_person += np.minimum(offset, PROPORTION[0] - 1, out=scratch)
    last_auction = np.multiply(epoch, PROPORTION[1], out=new(length, np.int64))
    offset -= PROPORTION[0]
    last_auction += np.clip(offset, -1, PROPORTION[1] - 1, out=scratch)
    np.multiply(n, 1000, out=scratch)
    exact = np.divide(scratch, c.event_rate, out=new(length, np.float64))  # float(n * 1000) / event_rate
    times = new(length, np.int64)
    np.copyto(times, exact, casting="unsafe")  # truncates, as int()
    times += c.base_time
    if c.out_of_order:
        lag = uniform(r.draw())
        lag *= c.out_of_order
        lag *= 1000.0
        np.copyto(scratch, lag, casting="unsafe")
        times -= scratch

    is_bid = np.equal(kind, BID, out=new(length, np.bool_))
    others = np.logical_not(is_bid, out=new(length, np.bool_))
    at = np.flatnonzero(others)
    r.keep(at, others, _DRAWS)
    bid = _bids(c, r, last_person, last_auction, times, is_bid)
    drawn = r.kept
    columns = []
    for code, kind_type in ((PERSON, PERSON_TYPE), (AUCTION, AUCTION_TYPE)):
        mine = np.flatnonzero(kind[at] == code)  # of the rows `at`
        rows = at[mine]
        lp, la, t = (column.take(rows, out=new(len(rows), np.int64), mode="clip")
                     for column in (last_person, last_auction, times))
        draws = drawn.take(mine, axis=1, out=new((_DRAWS, len(mine)), np.uint64), mode="clip")
        fields = _persons(draws, lp, t) if code == PERSON else _auctions(c, draws, lp, la, t)
        columns.append(spread(kind_type, fields, rows, length))
    return pa.RecordBatch.from_arrays([pa.array(kind), *columns, bid, pa.array(times)], schema=SCHEMA)


def batches(config: NexmarkConfig, batch_size: int = 65_536) -> Iterator[pa.RecordBatch]:
    """Every event of a bounded configuration, in event-number order, `batch_size` a batch
    (the columnar counterpart of `events(config)`, for reference results and baselines)."""
    if config.events is None:
        raise JobDefinitionError("batches() needs a bounded NexmarkConfig (events=N)")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise JobDefinitionError(f"batches() needs an integer batch_size >= 1; got {batch_size!r}")
    return (event_batch(config, (first, min(first + batch_size, config.events), 1))
            for first in range(0, config.events, batch_size))
