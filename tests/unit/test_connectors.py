"""PostgresSink and KafkaSource without servers: definition errors, gids, rows, types."""
import pyarrow as pa
import pytest

import raystream as rs
from raystream._postgres_tables import address, as_rows, column_types
from raystream._postgres_writer import Gid, gid_owner


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
