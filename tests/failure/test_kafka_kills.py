"""Kafka in, exactly once out, under SIGKILL: a restore seeks every partition to the
offsets in the checkpoint, so FileSink holds every order once and PostgreSQL's totals are
the sums of the input."""
import operator

import psycopg
import pytest

import raystream as rs
from tests.helpers.kafka import new_topic, produce_orders
from tests.helpers.postgres import expected_totals, parse
from tests.helpers.support import wait_until

from .harness import kill, running

ORDERS = 200_000  # about 3 s of reading here: time to kill mid-stream


@pytest.fixture(scope="module")
def orders_topic(kafka_bootstrap):
    topic = new_topic(kafka_bootstrap, 4)
    produce_orders(kafka_bootstrap, topic, range(ORDERS), 4)
    return topic


def kafka_job(bootstrap: str, topic: str, dsn: str, out: str) -> rs.Job:
    job = rs.Job("kafka_orders", parallelism=2, checkpoint=rs.CheckpointConfig(interval=0.3),
                 restart=rs.RestartStrategy(delay=0.1))
    orders = job.source("source", rs.sources.KafkaSource(bootstrap, topic, until="latest")).map("order", parse)
    orders.sink("files", rs.sinks.FileSink(out))
    (orders.key_by("by_customer", operator.itemgetter("customer"), value=operator.itemgetter("amount"))
     .reduce("total", operator.add)
     .sink("totals", rs.sinks.PostgresSink(dsn, "totals", mode="upsert", key="customer",
                                           columns=("customer", "total"), create_table=True)))
    return job


def check(dsn: str, out: str) -> None:
    ids = sorted(r["id"] for r in rs.sinks.read_files(out))
    assert len(ids) == ORDERS and ids == list(range(ORDERS)), \
        f"{len(ids)} order rows, {len(set(ids))} distinct ids; expected {ORDERS} ids once each"
    with psycopg.connect(dsn) as conn:
        assert dict(conn.execute("SELECT customer, total FROM totals").fetchall()) == expected_totals(ORDERS)


@pytest.mark.parametrize("victim", ["subtask", pytest.param("coordinator", marks=pytest.mark.extended)])
def test_killed_while_reading(kafka_bootstrap, orders_topic, pg_dsn, tmp_path, victim):
    out = str(tmp_path / "orders")
    handle = kafka_job(kafka_bootstrap, orders_topic, pg_dsn, out).start()
    status = wait_until(lambda: running(handle, checkpoints=1), "a checkpoint")
    read = status.steps["source"].records_out
    assert read < ORDERS * 0.8, f"the source read {read} of {ORDERS} before the kill: too late to test a restore"
    source = next(name for name in sorted(status.pids) if name.startswith("source"))  # it holds the offsets
    kill(status.coordinator_pid if victim == "coordinator" else status.pids[source])
    result = handle.wait()
    assert result.state == "finished" and (victim == "coordinator" or result.restarts >= 1)
    check(pg_dsn, out)
