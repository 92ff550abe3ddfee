"""PostgresSink and KafkaSource without servers: definition errors, gids, rows, types."""
import pyarrow as pa
import pytest

import raystream as rs
from raystream.connectors.postgres.tables import address, as_rows, column_types
from raystream.connectors.postgres.writer import Gid, gid_owner


def test_postgres_definition_errors_say_what_to_do():
    with pytest.raises(rs.JobDefinitionError, match="PGPASSWORD or a password file"):
        rs.sinks.PostgresSink("postgresql://app:hunter2@db/orders", "t")
    with pytest.raises(rs.JobDefinitionError, match="needs key="):
        rs.sinks.PostgresSink("host=db", "t", mode="upsert")
    with pytest.raises(rs.JobDefinitionError, match="key .* must be among columns"):
        rs.sinks.PostgresSink("host=db", "t", mode="upsert", key="k", columns=("a", "b"))
    with pytest.raises(rs.JobDefinitionError, match="mode must be one of append, upsert"):
        rs.sinks.PostgresSink("host=db", "t", mode="merge")
    with pytest.raises(rs.JobDefinitionError, match="not a valid connection string"):
        rs.sinks.PostgresSink("host=db port", "t")


def test_the_dsn_shown_is_host_port_and_database(monkeypatch):
    monkeypatch.delenv("PGHOST", raising=False)
    monkeypatch.setenv("PGPORT", "6543")
    monkeypatch.setenv("PGPASSWORD", "never-shown")
    sink = rs.sinks.PostgresSink("host=db.internal dbname=shop user=app", "public.t")
    assert repr(sink) == "PostgresSink('db.internal:6543/shop', 'public.t', mode='append')"
    assert address("dbname=x") == "localhost:6543/x"


def test_gids_name_job_step_subtask_run_attempt_and_checkpoint():
    gid = str(Gid(gid_owner("billing", "totals"), 3, "20261130T101010-abc123", 2, 17))
    assert gid == "rs|billing|totals|3|20261130T101010-abc123|2|17"
    assert Gid.parse(gid) == Gid("rs|billing|totals", 3, "20261130T101010-abc123", 2, 17)
    assert Gid.parse("someone-elses-transaction") is None
    long = gid_owner("j" * 100, "s" * 100)
    assert len(long) < 40 and long == gid_owner("j" * 100, "s" * 100)


def test_rows_from_dicts_tuples_and_arrow():
    assert as_rows([{"a": 1, "b": "x"}, {"b": "y", "a": 2}], None) == (("a", "b"), [(1, "x"), (2, "y")])
    assert as_rows([{"a": 1, "b": "x", "c": 0}], ("b", "a")) == (("b", "a"), [("x", 1)])
    assert as_rows([("k", 5)], ("key", "total")) == (("key", "total"), [("k", 5)])
    batch = pa.RecordBatch.from_pydict({"a": [1, 2], "b": ["x", "y"]})
    assert as_rows(batch, None) == (("a", "b"), [(1, "x"), (2, "y")])
    with pytest.raises(rs.SinkError, match="name their fields with columns="):
        as_rows([("k", 5)], None)
    with pytest.raises(rs.SinkError, match="has 3 fields; columns= names 2"):
        as_rows([("k", 5, 6)], ("key", "total"))
    with pytest.raises(rs.SinkError, match="got a int"):
        as_rows([1, 2], None)


def test_table_types_inferred_from_the_first_rows():
    import datetime as dt

    rows = [(1, 2.5, "x", True, b"\x00", dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), {"n": 1}, None)]
    assert column_types(("i", "f", "s", "b", "raw", "at", "doc", "empty"), rows) == {
        "i": "bigint", "f": "double precision", "s": "text", "b": "boolean", "raw": "bytea",
        "at": "timestamptz", "doc": "jsonb", "empty": "text"}


def test_kafka_definition_errors():
    with pytest.raises(rs.JobDefinitionError, match="topics must be topic names"):
        rs.sources.KafkaSource("localhost:9092", [])
    with pytest.raises(rs.JobDefinitionError, match="start must be 'earliest', 'latest'"):
        rs.sources.KafkaSource("localhost:9092", "t", start="middle")
    with pytest.raises(rs.JobDefinitionError, match="until must be None or 'latest'"):
        rs.sources.KafkaSource("localhost:9092", "t", until="earliest")
    event_time = rs.sources.KafkaSource.event_time(max_delay=2)
    record = rs.sources.KafkaRecord("t", 0, 5, 1_767_225_600.5, None, b"{}")
    assert event_time.timestamp_fn(record) == 1_767_225_600.5 and event_time.idle_after == 5.0


@pytest.mark.parametrize("setting", ["ssl.key.pem", "sasl.oauthbearer.assertion.private.key.pem",
                                     "sasl.oauthbearer.assertion.private.key.passphrase", "sasl.oauthbearer.config"])
def test_kafka_config_refuses_settings_that_carry_secrets(setting):
    with pytest.raises(rs.JobDefinitionError, match=f"must not hold credentials \\({setting}:.*RAYSTREAM_KAFKA_") as e:
        rs.sources.KafkaSource("localhost:9092", "t", config={setting: "s3cr3t-value"})
    assert "s3cr3t" not in str(e.value)


def test_kafka_config_of_settings_without_secrets_is_taken():
    from raystream.connectors.kafka import CONFIG_SETTINGS

    config = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "app",
              "ssl.ca.location": "/etc/kafka/ca.pem", "ssl.certificate.location": "/etc/kafka/client.pem",
              "ssl.key.location": "/etc/kafka/client.key", "ssl.endpoint.identification.algorithm": "https",
              "client.id": "orders", "fetch.max.bytes": 10_000_000, "session.timeout.ms": 30_000,
              "isolation.level": "read_committed", "debug": "fetch", "log_level": 6}
    assert set(config) <= CONFIG_SETTINGS
    source = rs.sources.KafkaSource("localhost:9092", "t", config=config)
    assert source.config == config


def test_kafka_config_refuses_unknown_settings_its_own_and_keys_in_certificates():
    with pytest.raises(rs.JobDefinitionError, match=r"\(fetch.max.byte: not among the settings known .*check the spell"):
        rs.sources.KafkaSource("localhost:9092", "t", config={"fetch.max.byte": 1})
    with pytest.raises(rs.JobDefinitionError, match="sets group.id itself: give bootstrap_servers= and group_id="):
        rs.sources.KafkaSource("localhost:9092", "t", config={"group.id": "other"})
    pem = "-----BEGIN CERTIFICATE-----\n...\n-----BEGIN PRIVATE KEY-----\n..."
    with pytest.raises(rs.JobDefinitionError, match=r"\(ssl.certificate.pem: holding a private key"):
        rs.sources.KafkaSource("localhost:9092", "t", config={"ssl.certificate.pem": pem})
    with pytest.raises(rs.JobDefinitionError, match="without user:password@") as e:
        rs.sources.KafkaSource("app:s3cr3t@localhost:9092", "t")
    assert "s3cr3t" not in str(e.value)


def test_kafka_secrets_come_from_the_environment_of_the_process_making_the_consumer(monkeypatch):
    import pickle

    monkeypatch.setenv("RAYSTREAM_KAFKA_SASL_PASSWORD", "s3cr3t-value")
    monkeypatch.setenv("RAYSTREAM_KAFKA_SSL_KEY_PASSWORD", "passphrase")
    monkeypatch.setenv("RAYSTREAM_KAFKA_SASL_USERNAME", "from-env")
    monkeypatch.setenv("RAYSTREAM_KAFKA_GROUP_ID", "not-this-one")
    source = rs.sources.KafkaSource("localhost:9092", "t", group_id="g", config={"sasl.username": "app"})
    config = source._client_config()
    assert config["sasl.password"] == "s3cr3t-value" and config["ssl.key.password"] == "passphrase"
    assert config["sasl.username"] == "app" and config["group.id"] == "g"  # config, then its own, win
    assert b"s3cr3t" not in pickle.dumps(source)  # what travels to the subtasks
    monkeypatch.delenv("RAYSTREAM_KAFKA_SASL_PASSWORD")
    assert "sasl.password" not in source._client_config()  # read each time a consumer is made


def test_postgres_dsn_refuses_sslpassword():
    with pytest.raises(rs.JobDefinitionError, match=r"must not hold secrets \(sslpassword\).*service file"):
        rs.sinks.PostgresSink("host=db dbname=orders user=app sslkey=/etc/pg/client.key sslpassword=x", "t")


def test_postgres_dsn_refuses_a_password_in_a_uri():
    for dsn in ("postgresql://app:hunter2@db/orders", "postgresql://app@db/orders?password=hunter2"):
        with pytest.raises(rs.JobDefinitionError, match=r"must not hold secrets \(password\).*PGPASSWORD"):
            rs.sinks.PostgresSink(dsn, "t")


def test_postgres_dsn_refuses_parameters_not_known_to_be_free_of_secrets():
    with pytest.raises(rs.JobDefinitionError, match=r"not known to be free of secrets \(replication\)"):
        rs.sinks.PostgresSink("host=db dbname=orders replication=database", "t")


@pytest.mark.parametrize("dsn", ["host=db sslpassword=s3cr3t-value", "postgresql://app:s3cr3t%zz@db/orders",
                                 "postgresql://app:s3cr3t value@db/orders"])
def test_postgres_dsn_errors_never_show_a_secret(dsn):
    with pytest.raises(rs.JobDefinitionError) as e:
        rs.sinks.PostgresSink(dsn, "t")
    assert "s3cr3t" not in str(e.value)
