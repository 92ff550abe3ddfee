"""Topics filled with orders for the KafkaSource tests."""
from __future__ import annotations

import json
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

#: Message timestamps start here (2026-01-01T00:00:00Z), one millisecond apart.
T0_MS = 1_767_225_600_000


def new_topic(bootstrap: str, partitions: int, prefix: str = "orders") -> str:
    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # held until the topic exists
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    futures[topic].result(timeout=10)
    return topic


def produce_orders(bootstrap: str, topic: str, ids: range, partitions: int, customers: int = 37) -> None:
    """Order i goes to partition i % partitions with timestamp T0_MS + i."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in ids:
        value = json.dumps({"id": i, "customer": i % customers, "amount": i % 100}).encode()
        producer.produce(topic, value=value, partition=i % partitions, timestamp=T0_MS + i)
        if i % 10_000 == 0:
            producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0, f"{remaining} messages not delivered to {topic}"
