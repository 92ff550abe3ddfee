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

The same events come in two representations: one tuple per event (`event`, `events`,
`NexmarkSource(config)`; records.py), or Arrow record batches computed with numpy over
whole ranges of event numbers, for columnar queries and for rates a per-record generator
cannot reach (`event_batch`, `batches`, `NexmarkSource(config, columnar=True)`;
columnar.py). The batches' layout, one `event_type` column and one struct column per
kind, is described in schema.py, with `bids`, `auctions` and `persons` to flatten one kind.

    from raystream.connectors import nexmark as nx
    for batch in nx.batches(nx.NexmarkConfig(events=1_000_000)):
        prices = nx.bids(batch).column("price")

Modules: config.py (NexmarkConfig), model.py (the event types and what both generators
share), records.py and columnar.py (the generators; kernels.py holds the numpy building
blocks of the columnar one), schema.py (the Arrow layout),
source.py (the source).
"""
from raystream.connectors.nexmark.columnar import MAX_EVENT, batches, event_batch
from raystream.connectors.nexmark.config import NexmarkConfig
from raystream.connectors.nexmark.model import Auction, Bid, Person
from raystream.connectors.nexmark.records import event, events
from raystream.connectors.nexmark.schema import (
    AUCTION, AUCTION_TYPE, BID, BID_TYPE, PERSON, PERSON_TYPE, SCHEMA, auctions, bids, persons)
from raystream.connectors.nexmark.source import NexmarkSource, event_time

__all__ = ["AUCTION", "AUCTION_TYPE", "Auction", "BID", "BID_TYPE", "Bid", "MAX_EVENT", "NexmarkConfig",
           "NexmarkSource", "PERSON", "PERSON_TYPE", "SCHEMA", "Person", "auctions", "batches", "bids", "event",
           "event_batch", "event_time", "events", "persons"]

# Pickles name a class by its module: keyed state holding events, and anything else that
# pickles these, keeps the name it had when this package was one module, so state written
# now also restores with a raystream from before the split.
for _cls in (Auction, Bid, Person, NexmarkConfig, NexmarkSource):
    _cls.__module__ = __name__
del _cls
