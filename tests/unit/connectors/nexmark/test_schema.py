"""The Arrow layout of columnar events, and the flat views of one kind."""
from __future__ import annotations

import pyarrow as pa

from raystream.connectors import nexmark as nx


def test_the_layout_is_one_struct_per_kind_named_as_the_event_types():
    batch = nx.event_batch(nx.NexmarkConfig(), (0, 200, 1))
    assert batch.schema == nx.SCHEMA
    assert batch.schema.names == ["event_type", "person", "auction", "bid", "date_time"]
    assert batch.schema.field("event_type").type == pa.int8() and batch.schema.field("date_time").type == pa.int64()
    for column, kind in (("person", nx.Person), ("auction", nx.Auction), ("bid", nx.Bid)):
        struct = batch.schema.field(column).type
        assert [f.name for f in struct] == list(kind._fields)
        assert {str(f.type) for f in struct} <= {"int64", "string"}
        assert struct.field("date_time").type == pa.int64()
    assert batch.column("event_type").to_pylist()[:5] == [nx.PERSON, nx.AUCTION, nx.AUCTION, nx.AUCTION, nx.BID]


def test_a_structs_fields_are_null_exactly_where_it_is():
    batch = nx.event_batch(nx.NexmarkConfig(out_of_order=1.0), (3, 4_000, 3))
    for column in ("person", "auction", "bid"):
        struct = batch.column(column)
        for i in range(struct.type.num_fields):
            assert struct.field(i).is_valid().equals(struct.is_valid()), (column, i)
            assert struct.field(i).equals(struct.flatten()[i])


def test_each_kind_flattens_to_its_own_rows_in_event_order():
    config = nx.NexmarkConfig(seed=5)
    batch = nx.event_batch(config, (40, 1_040, 1))
    events = [nx.event(config, n) for n in range(40, 1_040)]
    for flatten, kind in ((nx.persons, nx.Person), (nx.auctions, nx.Auction), (nx.bids, nx.Bid)):
        flat = flatten(batch)
        assert flat.schema.names == list(kind._fields)
        assert [kind(**row) for row in flat.to_pylist()] == [e for e in events if isinstance(e, kind)]


def test_a_batch_without_a_kind_flattens_to_no_rows_of_it():
    batch = nx.event_batch(nx.NexmarkConfig(), (4, 50, 1))  # bids only
    assert nx.persons(batch).num_rows == 0 and nx.auctions(batch).num_rows == 0
    assert nx.persons(batch).schema.names == list(nx.Person._fields)
    assert nx.bids(batch).num_rows == 46
