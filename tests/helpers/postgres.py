"""A job that writes to PostgreSQL, and the invariants its committed tables must hold."""
from __future__ import annotations

import json
import operator
from collections import Counter

import psycopg

import raystream as rs

CUSTOMERS = 37


def order(i: int) -> dict:
    return {"id": i, "customer": i % CUSTOMERS, "amount": i % 100}


def parse(message: rs.sources.KafkaRecord) -> dict:
    return json.loads(message.value)


def orders_job(dsn: str, n: int, *, rate: float | None = None, guarantee: str = "exactly_once",
               faults: tuple = (), interval: float = 0.3, parallelism: int = 2,
               kafka: rs.sources.Source | None = None) -> rs.Job:
    """`n` orders (from `kafka`, or made up), each appended to table `orders`; per-customer
    totals upserted into `totals`."""
    job = rs.Job("pg_orders", parallelism=parallelism, guarantee=guarantee,
                 checkpoint=rs.CheckpointConfig(interval=interval),
                 restart=rs.RestartStrategy(delay=0.1, max_restarts=20),
                 runtime=rs.RuntimeConfig(faults=faults))
    if kafka is not None:
        orders = job.source("source", kafka).map("order", parse)
    else:
        orders = job.source("source", rs.sources.SequenceSource(n, partitions=2, rate=rate)).map("order", order)
    orders.sink("rows", rs.sinks.PostgresSink(dsn, "orders", create_table=True))
    (orders.key_by("by_customer", operator.itemgetter("customer"), value=operator.itemgetter("amount"))
     .reduce("total", operator.add)
     .sink("totals", rs.sinks.PostgresSink(dsn, "totals", mode="upsert", key="customer",
                                           columns=("customer", "total"), create_table=True)))
    return job


def expected_totals(n: int) -> dict[int, int]:
    totals: Counter = Counter()
    for i in range(n):
        o = order(i)
        totals[o["customer"]] += o["amount"]
    return dict(totals)


def check_exactly_once(dsn: str, n: int) -> None:
    """Every order id once in `orders`, totals equal to the sums of the input, nothing prepared."""
    with psycopg.connect(dsn) as conn:
        count, distinct, low, high = conn.execute(
            "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM orders").fetchone()
        assert (count, distinct, low, high) == (n, n, 0, n - 1), \
            f"orders: {count} rows, {distinct} distinct ids in [{low}, {high}]; expected {n} ids 0..{n - 1} once each"
        wrong = conn.execute(
            f"SELECT count(*) FROM orders WHERE customer <> id % {CUSTOMERS} OR amount <> id % 100").fetchone()[0]
        assert wrong == 0, f"{wrong} order rows do not match their ids"
        totals = dict(conn.execute("SELECT customer, total FROM totals").fetchall())
        assert totals == expected_totals(n)
        prepared = conn.execute("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()").fetchall()
        assert not prepared, f"prepared transactions left after the job: {prepared}"
