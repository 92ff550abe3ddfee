"""Orders from Kafka to per-customer totals in PostgreSQL, exactly once.

A generator fills a Kafka topic with orders first (`setup`); the job reads every
partition of the topic up to where it ended when the job started, keeps per-customer
order counts and totals, and upserts them into table `customer_totals` with two-phase
commit. At the end `report` compares the table with totals computed from the generator.

    ORDERS_KAFKA=127.0.0.1:9092 ORDERS_PG_DSN="host=127.0.0.1 user=postgres dbname=postgres" \\
        raystream run jobs/orders_to_postgres.py --chaos 2

Settings (environment): ORDERS_KAFKA (bootstrap servers), ORDERS_PG_DSN (a libpq DSN
without a password: PGPASSWORD or ~/.pgpass gives it), ORDERS_TOPIC, ORDERS_COUNT,
ORDERS_PARTITIONS, ORDERS_CUSTOMERS. The server needs max_prepared_transactions >= 4.
"""
from __future__ import annotations

import json
import os

import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

import raystream as rs

KAFKA = os.environ.get("ORDERS_KAFKA", "127.0.0.1:9092")
DSN = os.environ.get("ORDERS_PG_DSN", "host=127.0.0.1 user=postgres dbname=postgres")
TOPIC = os.environ.get("ORDERS_TOPIC", "orders")
COUNT = int(os.environ.get("ORDERS_COUNT", "1000000"))
PARTITIONS = int(os.environ.get("ORDERS_PARTITIONS", "4"))
CUSTOMERS = int(os.environ.get("ORDERS_CUSTOMERS", "1000"))
TABLE = "customer_totals"


def make_order(i: int) -> dict:
    """Order i of the generator: the same every time, so the totals can be recomputed."""
    return {"order_id": i, "customer": f"c{(i * 7919) % CUSTOMERS:05d}", "cents": 1 + (i * 104729) % 20_000}


def parse(message: rs.sources.KafkaRecord) -> dict:
    return json.loads(message.value)


def add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return a[0] + b[0], a[1] + b[1]


job = rs.Job("orders_to_postgres", parallelism=2, checkpoint=rs.CheckpointConfig(interval=1.0))
(
    job.source("orders", rs.sources.KafkaSource(KAFKA, TOPIC, until="latest", group_id="orders_to_postgres"))
    .map("parse", parse)
    .key_by("by_customer", lambda o: o["customer"], value=lambda o: (1, o["cents"]))
    .reduce("totals", add)
    .map("row", lambda kv: {"customer": kv[0], "orders": kv[1][0], "total_cents": kv[1][1]})
    .sink("customer_totals", rs.sinks.PostgresSink(DSN, TABLE, mode="upsert", key="customer", create_table=True))
)


def setup(resume: bool) -> None:
    """A fresh run fills a new topic with COUNT orders and starts from an empty table; a
    resumed one keeps both."""
    if resume:
        return
    admin = AdminClient({"bootstrap.servers": KAFKA})
    if TOPIC in admin.list_topics(timeout=10).topics:
        admin.delete_topics([TOPIC])[TOPIC].result(timeout=10)
    admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)])[TOPIC].result(timeout=10)
    producer = Producer({"bootstrap.servers": KAFKA, "linger.ms": 5})
    for i in range(COUNT):
        producer.produce(TOPIC, key=str(i).encode(), value=json.dumps(make_order(i)).encode())
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(60):
        raise SystemExit(f"could not write {COUNT} orders to {TOPIC} at {KAFKA}")
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    print(f"setup: {COUNT:,} orders in topic {TOPIC!r} ({PARTITIONS} partitions) at {KAFKA}")


def expected() -> dict[str, tuple[int, int]]:
    totals: dict[str, tuple[int, int]] = {}
    for i in range(COUNT):
        o = make_order(i)
        totals[o["customer"]] = add(totals.get(o["customer"], (0, 0)), (1, o["cents"]))
    return totals


def report(result: rs.JobResult) -> bool:
    """Committed totals against the generator's; False (exit status 1) when they differ."""
    with psycopg.connect(DSN) as conn:
        rows = {c: (n, t) for c, n, t in conn.execute(f"SELECT customer, orders, total_cents FROM {TABLE}")}
        prepared = conn.execute("SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
                                ).fetchone()[0]
    want = expected()
    wrong = sum(1 for c in want.keys() | rows.keys() if rows.get(c) != want.get(c))
    orders = sum(n for n, _ in rows.values())
    ok = wrong == 0 and prepared == 0 and orders == COUNT
    print(f"{TABLE}: {len(rows):,} customers, {orders:,} orders of {COUNT:,}; {wrong} customers wrong; "
          f"{prepared} prepared transactions left. {'EXACTLY ONCE' if ok else 'WRONG'}")
    return ok


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
