"""The Arrow layout of columnar Nexmark events, and the views a columnar query takes of it.

One record batch holds events of all three kinds in event-number order, as Flink's Nexmark
lays out a single source, so that a batch is a contiguous run of a partition's events and
its offset stays a count. Its columns::

    event_type  int8       0 person, 1 auction, 2 bid
    person      struct     null unless a person:  id, name, email_address, credit_card,
                                                  city, state, date_time
    auction     struct     null unless an auction: id, item_name, description, initial_bid,
                                                  reserve, date_time, expires, seller, category
    bid         struct     null unless a bid:     auction, bidder, price, channel, url, date_time
    date_time   int64      the event's time (milliseconds since the epoch), whatever its kind

The struct fields are named as the fields of `Person`, `Auction` and `Bid`; integers are
int64 and text is string (plain, not dictionary-encoded, so that every Arrow kernel takes
it). A struct's fields are null exactly where the struct is, so `.field(name)` and
`.flatten()` agree. The top-level `date_time` lets a query assign event time without
unpacking a struct. `bids(batch)`, `auctions(batch)` and `persons(batch)` give one kind's
rows as a flat batch (a filter and the struct's fields: no Python per row).
"""
from __future__ import annotations

from typing import get_type_hints

import pyarrow as pa
import pyarrow.compute as pc

from raystream.connectors.nexmark.model import Auction, Bid, Person

__all__ = ["AUCTION", "AUCTION_TYPE", "BID", "BID_TYPE", "PERSON", "PERSON_TYPE", "SCHEMA", "auctions", "bids",
           "persons"]

PERSON, AUCTION, BID = 0, 1, 2  # values of `event_type`

_ARROW = {int: pa.int64(), str: pa.string()}


def _struct(record: type) -> pa.StructType:
    hints = get_type_hints(record)
    return pa.struct([pa.field(name, _ARROW[hints[name]]) for name in record._fields])


PERSON_TYPE = _struct(Person)
AUCTION_TYPE = _struct(Auction)
BID_TYPE = _struct(Bid)
SCHEMA = pa.schema([
    pa.field("event_type", pa.int8(), nullable=False),
    pa.field("person", PERSON_TYPE),
    pa.field("auction", AUCTION_TYPE),
    pa.field("bid", BID_TYPE),
    pa.field("date_time", pa.int64(), nullable=False),
])


def _kind(batch: pa.RecordBatch, column: str, code: int) -> pa.RecordBatch:
    rows = batch.column(column).filter(pc.equal(batch.column("event_type"), pa.scalar(code, pa.int8())))
    return pa.RecordBatch.from_struct_array(rows)


def persons(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch's persons as a flat batch with the fields of `Person`, in event order."""
    return _kind(batch, "person", PERSON)


def auctions(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch's auctions as a flat batch with the fields of `Auction`, in event order."""
    return _kind(batch, "auction", AUCTION)


def bids(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch's bids as a flat batch with the fields of `Bid`, in event order."""
    return _kind(batch, "bid", BID)
