"""PostgresSink against a real PostgreSQL 15: the two phases writer by writer, then jobs
on a local Ray under each guarantee."""
from __future__ import annotations

import psycopg
import pytest

import raystream as rs
from raystream._postgres_writer import PgTxn
from raystream.sinks import SinkContext
from tests.pg_support import check_exactly_once, orders_job
from tests.support import free_port


@pytest.fixture
def unused_port() -> int:
    return free_port()


def writer(sink: rs.sinks.PostgresSink, *, subtask: int = 0, parallelism: int = 1, attempt: int = 1,
           transactional: bool = True):
    return sink.build_writer(SinkContext("out", subtask, parallelism, transactional=transactional, run_id="r1",
                                         attempt=attempt, job_name="j"))


def rows(dsn: str, query: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def test_prepared_rows_are_invisible_until_committed_and_commit_is_idempotent(pg_dsn):
    sink = rs.sinks.PostgresSink(pg_dsn, "events", create_table=True)
    w = writer(sink)
    w.write_batch([{"id": i, "name": f"n{i}"} for i in range(1000)])
    txn = w.pre_commit(1)
    assert isinstance(txn, PgTxn) and txn.gid == "rs|j|out|0|r1|1|1"
    assert rows(pg_dsn, "SELECT count(*) FROM events") == [(0,)]
    assert rows(pg_dsn, "SELECT gid FROM pg_prepared_xacts") == [(txn.gid,)]
    w.commit(txn)
    w.commit(txn)  # again, as after a failure: already committed is done
    assert rows(pg_dsn, "SELECT count(*), count(DISTINCT id) FROM events") == [(1000, 1000)]
    assert w.close() == {"rows": 1000}


def test_recover_commits_the_restored_transactions_and_rolls_back_the_rest(pg_dsn):
    sink = rs.sinks.PostgresSink(pg_dsn, "events", create_table=True)
    old = [writer(sink, subtask=s, parallelism=3) for s in range(3)]
    txns, later = [], []
    for s, w in enumerate(old):
        w.write_batch([{"id": s * 10 + c, "c": c} for c in (1, 2)])
        txns.append(w.pre_commit(4))
        w.write_batch([{"id": 100 + s, "c": 5}])
        later.append(w.pre_commit(5))  # prepared after the checkpoint that is restored
    # Rescaled from 3 subtasks to 2: subtask 0 owns old subtasks 0 and 2, subtask 1 owns 1.
    new = [writer(sink, subtask=s, parallelism=2, attempt=2) for s in range(2)]
    new[0].recover([txns[0], txns[2]], 4)
    assert sorted(rows(pg_dsn, "SELECT gid FROM pg_prepared_xacts")) == [(txns[1].gid,), ("rs|j|out|1|r1|1|5",)]
    new[1].recover([txns[1]], 4)
    assert rows(pg_dsn, "SELECT gid FROM pg_prepared_xacts") == []
    assert rows(pg_dsn, "SELECT id FROM events ORDER BY id") == [(1,), (2,), (11,), (12,), (21,), (22,)]
    # A transaction that was rolled back cannot be committed: the checkpoint's data is gone.
    with pytest.raises(rs.StagedDataMissingError, match="not committed"):
        new[0].commit(later[0])


def test_a_late_recover_of_an_older_attempt_leaves_newer_transactions_alone(pg_dsn):
    sink = rs.sinks.PostgresSink(pg_dsn, "events", create_table=True)
    newer = writer(sink, attempt=3)
    newer.write_batch([{"id": 1}])
    txn = newer.pre_commit(7)
    writer(sink, attempt=2).recover([], 6)  # a slow request of a process already replaced
    assert rows(pg_dsn, "SELECT gid FROM pg_prepared_xacts") == [(txn.gid,)]
    newer.commit(txn)


def test_upsert_keeps_the_latest_row_per_key(pg_dsn):
    sink = rs.sinks.PostgresSink(pg_dsn, "totals", mode="upsert", key="k", columns=("k", "v"), create_table=True)
    w = writer(sink, transactional=False)
    w.write_batch([("a", 1), ("b", 2), ("a", 3)])
    assert w.pre_commit(1) is None  # at-least-once commits at the barrier
    w.write_batch([("b", 5), ("c", 6)])
    w.close()
    assert sorted(rows(pg_dsn, "SELECT k, v FROM totals")) == [("a", 3), ("b", 5), ("c", 6)]


def test_column_mismatch_and_missing_table_are_clear_errors(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id bigint NOT NULL, name text)")
    w = writer(rs.sinks.PostgresSink(pg_dsn, "t"))
    with pytest.raises(rs.SinkError, match=r"table t at 127\.0\.0\.1:\d+/t_\w+ has no column 'colour'"):
        w.write_batch([{"id": 1, "colour": "red"}])
    with pytest.raises(rs.SinkError, match="needs a value for 'id'"):
        w.write_batch([{"name": "x"}])
    sink = rs.sinks.PostgresSink(pg_dsn, "t", mode="upsert", key="name", columns=("id", "name"))
    with pytest.raises(rs.SinkError, match=r"no unique index on exactly \(name\)"):
        sink.check(job_name="j", step_id="out", parallelism=1, exactly_once=True)
    missing = rs.sinks.PostgresSink(pg_dsn, "nope")
    with pytest.raises(rs.SinkError, match="table nope does not exist.*create_table=True"):
        missing.check(job_name="j", step_id="out", parallelism=1, exactly_once=False)


def test_too_few_prepared_transactions_is_an_error_before_the_job_starts(pg_dsn):
    sink = rs.sinks.PostgresSink(pg_dsn, "t", create_table=True)
    with pytest.raises(rs.SinkError, match=r"max_prepared_transactions = 64; exactly-once needs at least 80"):
        sink.check(job_name="j", step_id="out", parallelism=40, exactly_once=True)
    sink.check(job_name="j", step_id="out", parallelism=40, exactly_once=False)  # no prepared transactions


def test_an_unreachable_server_is_retried_then_named(unused_port):
    sink = rs.sinks.PostgresSink(f"host=127.0.0.1 port={unused_port} user=postgres dbname=x", "t",
                                 retry=rs.Retry(attempts=2, backoff=0.01))
    with pytest.raises(rs.SinkError, match=f"could not connect to PostgreSQL at 127.0.0.1:{unused_port}/x"):
        sink.check(job_name="j", step_id="out", parallelism=1, exactly_once=True)


@pytest.mark.extended  # the default run writes to PostgreSQL from jobs in tests/failure
@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_a_job_writes_every_order_once_and_the_totals(ray_local, in_tmp_dir, pg_dsn, guarantee):
    result = orders_job(pg_dsn, 6_000, rate=20_000, guarantee=guarantee).run()
    assert sum(o["rows"] for o in result.outputs["rows"]) == 6_000
    assert result.checkpoints.completed >= 1
    check_exactly_once(pg_dsn, 6_000)
