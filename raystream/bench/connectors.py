"""Connector workloads of the benchmark: rows per second into PostgreSQL (append with
COPY, upsert per key) and records per second out of Kafka. They run when the suite is
given a server (`--postgres DSN`, `--kafka HOST:PORT`); each baseline is one process
doing the same I/O with the client library alone."""
from __future__ import annotations

import json
import operator
import time
import uuid
from typing import Any, Callable

import raystream as rs
from raystream.bench.modes import Mode, Workload
from raystream.bench.synthetic import MeasureSink

CUSTOMERS = 10_000
PARTITIONS = 4


def order(i: int) -> dict:
    return {"id": i, "customer": i % CUSTOMERS, "amount": i % 100}


def _fresh_table(dsn: str, table: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def postgres_job(dsn: str, events: int, mode: Mode, storage: str, *, upsert: bool) -> rs.Job:
    table = "bench_totals" if upsert else "bench_orders"
    _fresh_table(dsn, table)
    job = rs.Job(f"bench-pg-{'upsert' if upsert else 'append'}", parallelism=2, guarantee=mode.guarantee,
                 checkpoint=rs.CheckpointConfig(interval=mode.interval, storage=storage, retain=1000))
    orders = job.source("load", rs.sources.SequenceSource(events, partitions=2)).map("order", order)
    if upsert:
        (orders.key_by("by_customer", operator.itemgetter("customer"), value=operator.itemgetter("amount"))
         .reduce("total", operator.add)
         .sink("rows", rs.sinks.PostgresSink(dsn, table, mode="upsert", key="customer",
                                             columns=("customer", "total"), create_table=True)))
    else:
        orders.sink("rows", rs.sinks.PostgresSink(dsn, table, create_table=True))
    return job


def postgres_baseline(dsn: str, events: int) -> float:
    """One process COPYing the same rows in one transaction."""
    import psycopg

    _fresh_table(dsn, "bench_baseline")
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE bench_baseline (id bigint, customer bigint, amount bigint)")
        t0 = time.perf_counter()
        with conn.cursor().copy("COPY bench_baseline (id, customer, amount) FROM STDIN") as copy:
            for i in range(events):
                o = order(i)
                copy.write_row((o["id"], o["customer"], o["amount"]))
        conn.commit()
        seconds = time.perf_counter() - t0
    _fresh_table(dsn, "bench_baseline")
    return seconds


class KafkaTopic:
    """A topic filled once with `events` orders, the first time a run needs it."""

    def __init__(self, bootstrap: str, events: int):
        self.bootstrap, self.events = bootstrap, events
        self.name: str | None = None

    def __call__(self) -> str:
        if self.name is None:
            from confluent_kafka import Producer
            from confluent_kafka.admin import AdminClient, NewTopic

            name = f"bench-orders-{uuid.uuid4().hex[:8]}"
            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            admin.create_topics([NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)])[name].result(30)
            producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 20})
            for i in range(self.events):
                producer.produce(name, value=json.dumps(order(i)).encode(), partition=i % PARTITIONS)
                if i % 10_000 == 0:
                    producer.poll(0)
            if producer.flush(120):
                raise SystemExit(f"could not fill topic {name} at {self.bootstrap}")
            self.name = name
        return self.name


def kafka_job(topic: KafkaTopic, mode: Mode, storage: str) -> rs.Job:
    job = rs.Job("bench-kafka", parallelism=2, guarantee=mode.guarantee,
                 checkpoint=rs.CheckpointConfig(interval=mode.interval, storage=storage, retain=1000))
    (job.source("kafka", rs.sources.KafkaSource(topic.bootstrap, topic(), until="latest", group_id="bench"))
     .sink("out", MeasureSink()))
    return job


def kafka_baseline(topic: KafkaTopic) -> float:
    """One consumer reading every partition to its end."""
    from confluent_kafka import Consumer, TopicPartition

    name = topic()
    consumer = Consumer({"bootstrap.servers": topic.bootstrap, "group.id": "bench-baseline",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    consumer.assign([TopicPartition(name, p, 0) for p in range(PARTITIONS)])
    t0, ended, read = time.perf_counter(), 0, 0
    while ended < PARTITIONS:
        for m in consumer.consume(10_000, timeout=1):
            if m.error():
                ended += 1
            else:
                read += 1
    consumer.close()
    assert read == topic.events, f"the baseline read {read} of {topic.events} messages"
    return time.perf_counter() - t0


def _count(step: str) -> Callable[[rs.JobStatus], int]:
    return lambda s: s.steps[step].records_in if step in s.steps else 0


def connector_workloads(n: Callable[[float], int], postgres: str | None, kafka: str | None) -> dict[str, Any]:
    found: dict[str, Workload] = {}
    if postgres:
        e = n(1_000_000)
        found["postgres_append"] = Workload(
            "postgres_append", e, lambda m, s: postgres_job(postgres, e, m, s, upsert=False), _count("rows"),
            lambda: postgres_baseline(postgres, e))
        found["postgres_upsert"] = Workload(
            "postgres_upsert", e, lambda m, s: postgres_job(postgres, e, m, s, upsert=True), _count("total"),
            lambda: postgres_baseline(postgres, e))
    if kafka:
        e = n(1_000_000)
        topic = KafkaTopic(kafka, e)
        found["kafka_source"] = Workload("kafka_source", e, lambda m, s: kafka_job(topic, m, s), _count("out"),
                                         lambda: kafka_baseline(topic))
    return found
