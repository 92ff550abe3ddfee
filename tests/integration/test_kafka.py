"""KafkaSource against a real Kafka-protocol broker (Tansu, in memory) on a local Ray:
offsets in checkpoints and committed back, event time from message timestamps with an
idle partition, and clear errors for a missing topic or an unreachable broker."""
from __future__ import annotations

import datetime as dt
import operator
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

import raystream as rs
from tests.helpers.kafka import T0_MS, new_topic, produce_orders
from tests.helpers.postgres import check_exactly_once, orders_job, parse
from tests.helpers.support import refusing_port, wait_until


def test_partitions_offsets_and_the_end_are_fixed_when_the_job_starts(kafka_bootstrap):
    topic = new_topic(kafka_bootstrap, 3)
    produce_orders(kafka_bootstrap, topic, range(300), 3)
    source = rs.sources.KafkaSource(kafka_bootstrap, topic, start={(topic, 1): 40}, until="latest")
    assert source.list_partitions() == [f"{topic}:0", f"{topic}:1", f"{topic}:2"]
    assert source.start_offsets == {f"{topic}:0": 0, f"{topic}:1": 40, f"{topic}:2": 0}
    assert source.end_offsets == {f"{topic}:0": 100, f"{topic}:1": 100, f"{topic}:2": 100}
    part = source.build_partition(f"{topic}:1", 95, 1000)  # a restore seeks to the checkpoint's offset
    records = []
    while (batch := part.next_batch()) is not None:
        records += batch
    part.close()
    assert [r.offset for r in records] == [95, 96, 97, 98, 99]
    assert [parse(r)["id"] for r in records] == [286, 289, 292, 295, 298]
    assert records[0].timestamp == (T0_MS + 286) / 1000 and records[0].partition == 1


def read_all(part, timeout: float = 20.0) -> list:
    records, deadline = [], time.monotonic() + timeout
    while (batch := part.next_batch()) is not None:
        records += batch
        assert time.monotonic() < deadline, f"the partition did not end within {timeout:g} s ({len(records)} read)"
    part.close()
    return records


def test_a_bounded_partition_ending_in_a_transaction_marker_ends(kafka_bootstrap):
    """The last offset before the end is a commit marker, which no message is returned for."""
    topic = new_topic(kafka_bootstrap, 1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"tx-{topic}"})
    producer.init_transactions(10)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, value=b"{}", partition=0)
    producer.commit_transaction(10)
    source = rs.sources.KafkaSource(kafka_bootstrap, topic, until="latest")
    source.list_partitions()
    assert source.end_offsets == {f"{topic}:0": 6}  # five messages and the marker
    part = source.build_partition(f"{topic}:0", None, 1000)
    assert [r.offset for r in read_all(part)] == [0, 1, 2, 3, 4]
    assert part.snapshot() == (6, 6)


def test_start_and_end_fixed_at_the_first_start_are_restored_with_the_checkpoint(kafka_bootstrap):
    """A resumed (or rescaled, or --from) bounded job ends where it would have ended when
    it first started; a partition that appeared since is read from its beginning, also
    with start="latest"."""
    topic, added = new_topic(kafka_bootstrap, 1), new_topic(kafka_bootstrap, 1)
    produce_orders(kafka_bootstrap, topic, range(50), 1)
    first = rs.sources.KafkaSource(kafka_bootstrap, topic, start="latest", until="latest")
    assert first.list_partitions() == [f"{topic}:0"] and first.start_offsets == {f"{topic}:0": 50}
    part = first.build_partition(f"{topic}:0", 20, 1000)  # restored at offset 20 of the first run
    assert [r.offset for r in read_all(part)] == list(range(20, 50))
    checkpointed = part.snapshot()
    produce_orders(kafka_bootstrap, topic, range(50, 80), 1)  # more after the job first started
    produce_orders(kafka_bootstrap, added, range(80, 90), 1)  # and a new topic, before the resume
    resumed = rs.sources.KafkaSource(kafka_bootstrap, [topic, added], start="latest", until="latest")
    assert resumed.list_partitions() == [f"{topic}:0", f"{added}:0"]  # the driver lists them again
    assert read_all(resumed.build_partition(f"{topic}:0", checkpointed, 1000)) == []  # the first start's end
    assert [parse(r)["id"] for r in read_all(resumed.build_new_partition(f"{added}:0", 1000))] == list(range(80, 90))


def test_a_missing_topic_and_an_unreachable_broker_are_clear_errors(kafka_bootstrap):
    with pytest.raises(rs.SourceError, match=f"topic 'no-such-topic' does not exist at {kafka_bootstrap}"):
        rs.sources.KafkaSource(kafka_bootstrap, "no-such-topic").list_partitions()
    with refusing_port() as port, pytest.raises(rs.SourceError, match=f"could not reach Kafka at 127.0.0.1:{port}"):
        rs.sources.KafkaSource(f"127.0.0.1:{port}", "t", timeout=1, retry=rs.Retry(attempts=2, backoff=0.01)).list_partitions()
    with pytest.raises(rs.JobDefinitionError, match="must not hold credentials"):
        rs.sources.KafkaSource(kafka_bootstrap, "t", config={"sasl.password": "x"})


@pytest.mark.extended  # the default run has Kafka to PostgreSQL under SIGKILL (test_kafka_kills.py)
def test_kafka_to_postgres_exactly_once_and_offsets_committed_back(ray_local, in_tmp_dir, kafka_bootstrap, pg_dsn):
    topic = new_topic(kafka_bootstrap, 3)
    produce_orders(kafka_bootstrap, topic, range(6_000), 3)
    source = rs.sources.KafkaSource(kafka_bootstrap, topic, until="latest", group_id=f"g-{topic}")
    result = orders_job(pg_dsn, 6_000, kafka=source).run()
    assert result.steps["source"].records_out == 6_000
    check_exactly_once(pg_dsn, 6_000)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"g-{topic}"})
    committed = consumer.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
    consumer.close()
    assert [tp.offset for tp in committed] == [2_000, 2_000, 2_000]  # the final checkpoint's offsets


def test_an_idle_partition_does_not_hold_windows_back(ray_local, in_tmp_dir, kafka_bootstrap, tmp_path):
    """Partition 2 never gets a message; with idle_after its watermark steps aside, so
    windows fire while the (unbounded) job still runs."""
    topic = new_topic(kafka_bootstrap, 3)
    ids = [i for i in range(4_000) if i % 3 != 2]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in ids:
        producer.produce(topic, value=b"{}", partition=i % 3, timestamp=T0_MS + i)
    assert producer.flush(30) == 0
    out = str(tmp_path / "windows")
    job = rs.Job("kafka_windows", parallelism=2, checkpoint=rs.CheckpointConfig(interval=0.3))
    (job.source("source", rs.sources.KafkaSource(kafka_bootstrap, topic),
                event_time=rs.sources.KafkaSource.event_time(idle_after=0.5))
     .key_by("by_partition", operator.attrgetter("partition"), value=lambda m: 1)
     .window(rs.windows.Tumbling(dt.timedelta(seconds=1)))
     .reduce("count", operator.add)
     .map("row", lambda kv: {"partition": kv[0], "start": kv[1].start.isoformat(), "count": kv[1].value})
     .sink("out", rs.sinks.FileSink(out, roll="checkpoint")))  # read while it runs
    handle = job.start()
    try:
        # Windows [0, 1 s), [1 s, 2 s), [2 s, 3 s) of both busy partitions are complete before the job ends.
        wait_until(lambda: len(rs.sinks.read_files(out)) >= 6, "three windows of both busy partitions to fire")
    finally:
        handle.stop()
        handle.wait()
    counts = {(r["partition"], r["start"][11:19]): r["count"] for r in rs.sinks.read_files(out)}
    assert counts[(0, "00:00:00")] == 334 and counts[(1, "00:00:00")] == 333
    assert not any(p == 2 for p, _ in counts)


@pytest.mark.extended
def test_a_resumed_job_continues_from_its_offsets_and_reads_new_partitions_from_the_start(
        ray_local, in_tmp_dir, kafka_bootstrap, tmp_path):
    """The resumed bounded job ends where the job ended when it first started (the ends
    are in its checkpoint); the partition it did not know is read from its start."""
    first, second = new_topic(kafka_bootstrap, 2), new_topic(kafka_bootstrap, 1)
    produce_orders(kafka_bootstrap, first, range(100), 2)
    out = str(tmp_path / "orders")

    def job(topics: list[str]) -> rs.Job:
        j = rs.Job("kafka_resume", parallelism=2, checkpoint=rs.CheckpointConfig(interval=0.3))
        (j.source("source", rs.sources.KafkaSource(kafka_bootstrap, topics, until="latest"))
         .map("order", parse).sink("out", rs.sinks.FileSink(out)))
        return j

    job([first]).run()
    produce_orders(kafka_bootstrap, first, range(100, 150), 2)  # more on the old partitions: past their end
    produce_orders(kafka_bootstrap, second, range(150, 180), 1)  # and a partition the checkpoint does not know
    job([first, second]).run(resume=True)
    ids = sorted(r["id"] for r in rs.sinks.read_files(out))
    assert ids == [*range(100), *range(150, 180)], f"{len(ids)} rows, {len(set(ids))} distinct"
