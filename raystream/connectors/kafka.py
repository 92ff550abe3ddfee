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
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from raystream.errors import JobDefinitionError, SourceError
from raystream.event_time import EventTime
from raystream.retry import Retry
from raystream.source_api import Source, SourcePartition

try:  # optional: pip install "raystream[kafka]"
    import confluent_kafka as ck
except ImportError:  # reported when a KafkaSource is made
    ck = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

_librdkafka_log = logging.getLogger(__name__ + ".librdkafka")  # its messages, through logging
_STARTS = ("earliest", "latest")

# The librdkafka consumer settings (CONFIGURATION.md) a KafkaSource's `config` may hold:
# only those known to carry no secret. Files are named by their path on the nodes.
# Everything else (sasl.password, ssl.key.password, ssl.key.pem, ssl.keystore.password,
# sasl.oauthbearer.config / client.secret / extensions / assertion.private.key.pem and
# .passphrase, sasl.kerberos.kinit.cmd, callbacks...) comes from the environment.
CONFIG_SETTINGS = frozenset({
    # client, metadata, logging
    "client.id", "client.rack", "client.dns.lookup", "debug", "log_level", "log.connection.close",
    "log.thread.name", "enable.metrics.push", "statistics.interval.ms", "allow.auto.create.topics",
    "message.max.bytes", "receive.message.max.bytes", "max.in.flight.requests.per.connection", "max.in.flight",
    "metadata.max.age.ms", "metadata.recovery.strategy", "metadata.recovery.rebootstrap.trigger.ms",
    "topic.metadata.refresh.interval.ms", "topic.metadata.refresh.fast.interval.ms",
    "topic.metadata.refresh.sparse", "topic.metadata.propagation.max.ms",
    "api.version.request", "api.version.request.timeout.ms", "api.version.fallback.ms", "broker.version.fallback",
    # connections
    "socket.timeout.ms", "socket.send.buffer.bytes", "socket.receive.buffer.bytes", "socket.keepalive.enable",
    "socket.nagle.disable", "socket.max.fails", "socket.connection.setup.timeout.ms", "broker.address.ttl",
    "broker.address.family", "connections.max.idle.ms", "reconnect.backoff.ms", "reconnect.backoff.max.ms",
    "retry.backoff.ms", "retry.backoff.max.ms",
    # consumer, fetching
    "session.timeout.ms", "heartbeat.interval.ms", "max.poll.interval.ms", "coordinator.query.interval.ms",
    "queued.min.messages", "queued.max.messages.kbytes", "fetch.wait.max.ms", "fetch.queue.backoff.ms",
    "fetch.message.max.bytes", "max.partition.fetch.bytes", "fetch.max.bytes", "fetch.min.bytes",
    "fetch.error.backoff.ms", "isolation.level", "check.crcs",
    # TLS: paths of files on the nodes, public certificates, algorithms
    "security.protocol", "ssl.cipher.suites", "ssl.curves.list", "ssl.sigalgs.list", "ssl.providers",
    "ssl.key.location", "ssl.certificate.location", "ssl.certificate.pem", "ssl.ca.location", "ssl.ca.pem",
    "ssl.ca.certificate.stores", "ssl.crl.location", "ssl.keystore.location",
    "enable.ssl.certificate.verification", "ssl.endpoint.identification.algorithm",
    "https.ca.location", "https.ca.pem",
    # SASL: mechanism, names (a user name, like PostgresSink's `user`, is no secret), paths
    "sasl.mechanisms", "sasl.mechanism", "sasl.username", "sasl.kerberos.service.name",
    "sasl.kerberos.principal", "sasl.kerberos.keytab", "sasl.kerberos.min.time.before.relogin",
    "enable.sasl.oauthbearer.unsecure.jwt", "sasl.oauthbearer.method", "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.client.credentials.client.id", "sasl.oauthbearer.scope",
    "sasl.oauthbearer.token.endpoint.url", "sasl.oauthbearer.grant.type", "sasl.oauthbearer.assertion.algorithm",
    "sasl.oauthbearer.assertion.private.key.file", "sasl.oauthbearer.assertion.file",
    "sasl.oauthbearer.assertion.jwt.template.file", "sasl.oauthbearer.assertion.claim.aud",
    "sasl.oauthbearer.assertion.claim.exp.seconds", "sasl.oauthbearer.assertion.claim.iss",
    "sasl.oauthbearer.assertion.claim.jti.include", "sasl.oauthbearer.assertion.claim.nbf.seconds",
    "sasl.oauthbearer.assertion.claim.sub", "sasl.oauthbearer.metadata.authentication.type",
})
# Set by KafkaSource itself, from its arguments or because reading depends on them.
CONSUMER_OWN = frozenset({"bootstrap.servers", "metadata.broker.list", "group.id", "logger", "enable.auto.commit",
                          "auto.offset.reset", "enable.partition.eof"})
ENV_PREFIX = "RAYSTREAM_KAFKA_"
_PEM_SETTINGS = ("ssl.certificate.pem", "ssl.ca.pem", "https.ca.pem")  # certificates: public, unless a key is in


def environment_settings(environ: Any = None) -> dict[str, str]:
    """The consumer settings this process's environment gives: `RAYSTREAM_KAFKA_SASL_PASSWORD`
    is `sasl.password` (lower case, underscores as dots)."""
    environ = os.environ if environ is None else environ
    return {name[len(ENV_PREFIX):].lower().replace("_", "."): value
            for name, value in environ.items() if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX)}


def _check_config(config: Any) -> None:
    """Refuses a `config` with settings not known to carry no secret, naming them (never their values)."""
    if config is None:
        return
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise JobDefinitionError("KafkaSource config must be a dict of librdkafka settings by name")
    own = sorted(k for k in config if k in CONSUMER_OWN)
    if own:
        raise JobDefinitionError(f"KafkaSource sets {', '.join(own)} itself: give bootstrap_servers= and group_id= "
                                 "as arguments")
    refused = sorted(k for k in config if k not in CONFIG_SETTINGS)
    why = "not among the settings known to carry no secret (raystream.connectors.kafka.CONFIG_SETTINGS; check the spelling)"
    if not refused:
        refused = [k for k in _PEM_SETTINGS if "PRIVATE KEY" in str(config.get(k, ""))]
        url = urlsplit(str(config.get("sasl.oauthbearer.token.endpoint.url", "")))
        if "@" in url.netloc or url.query:  # user:password@ or ?client_secret=
            refused.append("sasl.oauthbearer.token.endpoint.url")
        why = "holding a private key, or a URL with user:password@ or a query"
    if refused:
        raise JobDefinitionError(
            f"KafkaSource config must not hold credentials ({', '.join(refused)}: {why}): the source travels to "
            "every subtask in actor arguments. Give them in the environment of the driver and of every node's Ray "
            f"workers as {ENV_PREFIX}<SETTING> (e.g. {ENV_PREFIX}SASL_PASSWORD for sasl.password), private keys as "
            "files on the nodes (ssl.key.location)")


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
    - `config`: more librdkafka consumer settings, only those known to carry no secret
      (`CONFIG_SETTINGS`: security protocol, SASL mechanism and user name, paths of
      certificate and key files, timeouts, fetch sizes...): the source travels to every
      subtask in actor arguments, readable by anyone who can read the cluster's tasks.
      Anything else is refused, so is a broker list with `user:password@`.

    Secrets (and any other setting) come from the environment of each process that
    makes a consumer: the driver (which lists the partitions) and the Ray workers of
    every node (set them where `ray start` runs; not in a runtime_env, which travels
    with the job too). `RAYSTREAM_KAFKA_<SETTING>` gives `<setting>`, upper case with
    dots as underscores: `RAYSTREAM_KAFKA_SASL_PASSWORD` is `sasl.password`,
    `RAYSTREAM_KAFKA_SSL_KEY_PASSWORD` is `ssl.key.password`. `config` takes precedence
    over the environment; the settings KafkaSource makes itself (`CONSUMER_OWN`) over
    both. A private key stays in a file on the nodes (`ssl.key.location`, readable by
    its owner only), never its text (`ssl.key.pem`).
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
        if "@" in bootstrap_servers:  # librdkafka takes no user:password@ there: it would be a host name
            raise JobDefinitionError("KafkaSource bootstrap_servers must be 'host:port[,...]' without user:password@: "
                                     f"give credentials as {ENV_PREFIX}SASL_USERNAME / {ENV_PREFIX}SASL_PASSWORD "
                                     "in the environment of the driver and of the nodes")
        _check_config(config)
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
        """The settings of a consumer made in this process: this node's environment (the
        secrets), then `config`, then KafkaSource's own. Never kept on the source, which
        is pickled."""
        return {**environment_settings(), **self.config, "bootstrap.servers": self.bootstrap_servers,
                "group.id": self.group_id, "logger": _librdkafka_log, "enable.auto.commit": False,
                "auto.offset.reset": "earliest", "enable.partition.eof": False}

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
