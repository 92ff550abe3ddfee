"""KafkaSource: the partitions of Kafka topics as a source, with offsets in checkpoints.

- Each partition of the topics is one source partition, key "<topic>:<partition>", assigned
  to the source's subtasks by raystream (no consumer-group rebalancing inside a job).
- Where each partition starts is fixed once, when the job first starts (`list_partitions`,
  in the driver): "earliest", "latest", or given offsets. A restore seeks to the offsets in
  the checkpoint instead; a partition the checkpoint does not know (new since the job
  first started) starts at its beginning, whatever `start` says.
- After a checkpoint completes, its offsets are committed to Kafka under `group_id`, for
  monitoring (consumer lag) only: raystream restores from its own checkpoints.
- Records are `KafkaRecord`s. `KafkaSource.event_time(...)` takes event time from the
  message timestamps; each partition has its own watermark, and a partition without
  records for `idle_after` stops holding the watermark back.
- `until="latest"` makes the source bounded: each partition ends at the offset that was
  its end when the job first started. That end is part of the partition's offset in
  checkpoints, so a run resumed, rescaled or started from a savepoint ends there too (a
  partition new since then ends where it ended when that run started). The end is
  reached when the consumer's position passes it, so a transaction marker or a
  compaction gap at the end does not keep the partition open.
"""
from __future__ import annotations

import datetime as dt
import logging
import operator
import time
from dataclasses import dataclass
from typing import Any

from raystream.errors import JobDefinitionError, SourceError
from raystream.event_time import EventTime
from raystream.retry import Retry
from raystream.sources import Source, SourcePartition

try:  # optional: pip install "raystream[kafka]"
    import confluent_kafka as ck
except ImportError:  # reported when a KafkaSource is made
    ck = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

_librdkafka_log = logging.getLogger(__name__ + ".librdkafka")  # its messages, through logging
_STARTS = ("earliest", "latest")


@dataclass(frozen=True)
class KafkaRecord:
    """One message. `timestamp` is in seconds since the epoch (the message's CreateTime or
    LogAppendTime); `key` and `value` are bytes (None when absent)."""

    topic: str
    partition: int
    offset: int
    timestamp: float
    key: bytes | None
    value: bytes | None


class KafkaSource(Source):
    """Messages of Kafka `topics` (a name or a list of names).

    - `start`: "earliest", "latest", or `{(topic, partition): offset}` (partitions not in
      it start at their beginning). It applies when the job first starts; a partition
      that appears later (a topic added, on resume) starts at its beginning.
    - `until`: None (unbounded: stop the job to end it) or "latest" (end at the offsets
      that were the partitions' ends when the job first started, kept in checkpoints).
    - `group_id`: where completed checkpoints' offsets are committed, for monitoring.
    - `timeout`: seconds each try waits for the brokers when the job starts; `retry`:
      how often it tries.
    - `config`: more librdkafka settings (security, fetch sizes), never credentials
      (they would travel in actor arguments): give those in the brokers' environment.
    """

    def __init__(self, bootstrap_servers: str, topics: str | list[str], *, start: Any = "earliest",
                 until: str | None = None, group_id: str = "raystream", config: dict[str, Any] | None = None,
                 timeout: float = 10.0, retry: Retry = Retry()):
        if ck is None:
            raise JobDefinitionError('KafkaSource needs confluent-kafka: pip install "raystream[kafka]"')
        if not isinstance(bootstrap_servers, str) or not bootstrap_servers:
            raise JobDefinitionError(f"KafkaSource bootstrap_servers must be 'host:port[,...]'; got {bootstrap_servers!r}")
        names = [topics] if isinstance(topics, str) else list(topics)
        if not names or not all(isinstance(t, str) and t and ":" not in t for t in names):
            raise JobDefinitionError(f"KafkaSource topics must be topic names; got {topics!r}")
        if not (start in _STARTS or isinstance(start, dict)):
            raise JobDefinitionError(f"KafkaSource start must be 'earliest', 'latest' or {{(topic, partition): "
                                     f"offset}}; got {start!r}")
        if until not in (None, "latest"):
            raise JobDefinitionError(f"KafkaSource until must be None or 'latest'; got {until!r}")
        secret = sorted(k for k in (config or {}) if "password" in k or "secret" in k or k.endswith(".key"))
        if secret:
            raise JobDefinitionError(f"KafkaSource config must not hold credentials ({', '.join(secret)}): "
                                     "it travels to every subtask in actor arguments")
        self.bootstrap_servers = bootstrap_servers
        self.topics = names
        self.start = start
        self.until = until
        self.group_id = group_id
        self.config = dict(config or {})
        self.timeout = float(timeout)
        self.retry = retry
        # Fixed in the driver by list_partitions, before the job (and this object) goes to the actors.
        self.start_offsets: dict[str, int] = {}
        self.end_offsets: dict[str, int] = {}

    @staticmethod
    def event_time(max_delay: float | dt.timedelta = 0, idle_after: float | dt.timedelta | None = 5.0) -> EventTime:
        """Event time from the message timestamps; a partition idle for `idle_after` does
        not hold the watermark back."""
        return EventTime(operator.attrgetter("timestamp"), max_delay=max_delay, idle_after=idle_after)

    def _client_config(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap_servers, "group.id": self.group_id, "logger": _librdkafka_log,
                "enable.auto.commit": False, "auto.offset.reset": "earliest", "enable.partition.eof": False,
                **self.config}

    def list_partitions(self) -> list[str]:
        """Every partition of the topics; fixes where each starts (and ends, if bounded)."""
        consumer = ck.Consumer(self._client_config())
        try:
            metadata = self.retry.call(f"reaching Kafka at {self.bootstrap_servers}",
                                       lambda: self._metadata(consumer), (ck.KafkaException,))
        except ck.KafkaException as exc:
            raise SourceError(f"KafkaSource could not reach Kafka at {self.bootstrap_servers}: {exc.args[0].str()}; "
                              "check that the brokers run there and bootstrap_servers is right") from None
        try:
            keys = []
            for topic in self.topics:
                info = metadata.topics.get(topic)
                if info is None or info.error is not None:
                    raise SourceError(
                        f"KafkaSource: topic {topic!r} does not exist at {self.bootstrap_servers} "
                        f"(topics there: {', '.join(sorted(metadata.topics)[:20]) or 'none'}); create it first")
                keys += [f"{topic}:{p}" for p in sorted(info.partitions)]
            self._fix_offsets(consumer, keys)
        finally:
            consumer.close()
        return keys

    def _metadata(self, consumer: Any) -> Any:
        metadata = consumer.list_topics(timeout=self.timeout)
        if not metadata.brokers:
            raise ck.KafkaException(ck.KafkaError(ck.KafkaError._TRANSPORT, "no broker answered"))
        return metadata

    def _fix_offsets(self, consumer: Any, keys: list[str]) -> None:
        ends = self._end_offsets(consumer, keys) if self.until == "latest" or self.start == "latest" else {}
        for key in keys:
            topic, partition = _split(key)
            low, _ = consumer.get_watermark_offsets(ck.TopicPartition(topic, partition), timeout=self.timeout)
            if isinstance(self.start, dict):
                self.start_offsets[key] = int(self.start.get((topic, partition), low))
            else:
                self.start_offsets[key] = low if self.start == "earliest" else ends[key]
            if self.until == "latest":
                self.end_offsets[key] = ends[key]

    def _end_offsets(self, consumer: Any, keys: list[str]) -> dict[str, int]:
        """Each partition's end now. A fetch from the listed end confirms it: some brokers
        (Tansu) list the first offset of the last record batch instead."""
        listed = {k: consumer.get_watermark_offsets(ck.TopicPartition(*_split(k)), timeout=self.timeout)[1]
                  for k in keys}
        probe = ck.Consumer({**self._client_config(), "enable.partition.eof": True})
        try:
            probe.assign([ck.TopicPartition(*_split(k), listed[k]) for k in keys])
            waiting, deadline = set(keys), time.monotonic() + self.timeout
            while waiting and time.monotonic() < deadline:
                for m in probe.consume(10_000, timeout=0.2):
                    waiting.discard(f"{m.topic()}:{m.partition()}")
            if waiting:
                raise SourceError(f"KafkaSource could not read the end of {', '.join(sorted(waiting))} "
                                  f"at {self.bootstrap_servers} within {self.timeout:g} s")
            return {k: max(listed[k], probe.get_watermark_offsets(ck.TopicPartition(*_split(k)), cached=True)[1])
                    for k in keys}
        finally:
            probe.close()

    def build_partition(self, key: str, resume_state: Any | None, batch_size: int) -> SourcePartition:
        """`resume_state`: the next offset, or (next offset, end) for a bounded source, so
        the end fixed when the job first started outlives the driver that fixed it."""
        end = self.end_offsets.get(key)
        if resume_state is None:
            offset = self.start_offsets.get(key, ck.OFFSET_BEGINNING)
        elif isinstance(resume_state, (tuple, list)):  # (next, end); a list once it went through JSON
            offset = int(resume_state[0])
            if self.until is not None and resume_state[1] is not None:
                end = int(resume_state[1])
        else:
            offset = int(resume_state)
        return _KafkaPartition(self, key, offset, end, batch_size)

    def build_new_partition(self, key: str, batch_size: int) -> SourcePartition:
        """A partition new since the job first started: from its beginning, whatever `start` says."""
        return _KafkaPartition(self, key, ck.OFFSET_BEGINNING, self.end_offsets.get(key), batch_size)


def _split(key: str) -> tuple[str, int]:
    topic, _, partition = key.rpartition(":")
    return topic, int(partition)


class _KafkaPartition(SourcePartition):
    """One partition read by its own consumer; the offset is the next one to read (and,
    when bounded, the end)."""

    def __init__(self, source: KafkaSource, key: str, offset: int, end: int | None, batch_size: int):
        self._source = source
        self._topic, self._partition = _split(key)
        self._next = offset
        self._end = end
        self._batch_size = batch_size
        # Bounded: the end-of-partition event carries the fetch position, which moves past
        # transaction markers and compaction gaps that no message is returned for.
        config = {**source._client_config(), "enable.partition.eof": end is not None}
        self._consumer = ck.Consumer(config)
        self._closed = False
        self._consumer.assign([ck.TopicPartition(self._topic, self._partition, offset)])

    def next_batch(self) -> list[KafkaRecord] | None:
        if self._end is not None and self._next >= self._end:
            return None
        messages = self._consumer.consume(self._batch_size, timeout=0)
        out = []
        for m in messages:
            error = m.error()
            if error is not None:
                if error.code() == ck.KafkaError._PARTITION_EOF:
                    if m.offset() is not None and m.offset() > self._next:  # only markers or gaps were left
                        self._next = m.offset()
                    continue
                if error.retriable():
                    logger.warning("KafkaSource %s:%d: %s", self._topic, self._partition, error.str())
                    continue
                raise SourceError(f"KafkaSource could not read {self._topic}:{self._partition} from "
                                  f"{self._source.bootstrap_servers}: {error.str()}")
            offset = m.offset()
            if self._end is not None and offset >= self._end:
                break
            _, ts = m.timestamp()
            out.append(KafkaRecord(self._topic, self._partition, offset, ts / 1000, m.key(), m.value()))
            self._next = offset + 1
        return out

    def snapshot(self) -> int | tuple[int, int]:
        return self._next if self._end is None else (self._next, self._end)

    def next_awake(self) -> float | None:
        return time.time() + 0.05

    def checkpoint_complete(self, offset: Any) -> None:
        """For monitoring: the group's committed offset follows completed checkpoints."""
        if isinstance(offset, (tuple, list)):
            offset = offset[0]
        if not isinstance(offset, int) or offset < 0:
            return
        offsets = [ck.TopicPartition(self._topic, self._partition, offset)]
        if not self._closed:
            self._consumer.commit(offsets=offsets, asynchronous=True)
            return
        # Read to its end and closed: the final checkpoint's offsets still get reported.
        consumer = ck.Consumer(self._source._client_config())
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except ck.KafkaException as exc:  # monitoring only: the job goes on
            logger.warning("KafkaSource could not commit %s:%d@%d: %s", self._topic, self._partition, offset, exc)
        finally:
            consumer.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._consumer.close()
