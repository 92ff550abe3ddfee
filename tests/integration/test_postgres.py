"""PostgresSink against a real PostgreSQL 15: the two phases writer by writer, then jobs
on a local Ray under each guarantee."""
from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

import raystream as rs
from raystream.connectors.postgres.writer import PgTxn
from raystream.sinks import SinkContext
from tests.helpers.postgres import check_exactly_once, orders_job
from tests.helpers.support import refusing_port


@pytest.fixture
def unused_port() -> Iterator[int]:
    with refusing_port() as port:  # nothing can take it while the test runs
        yield port


def writer(sink: rs.sinks.PostgresSink, *, subtask: int = 0, parallelism: int = 1, attempt: int = 1,
           transactional: bool = True, run_id: str = "r1", resume_state=None):
    return sink.build_writer(SinkContext("out", subtask, parallelism, transactional=transactional, run_id=run_id,
                                         attempt=attempt, job_name="j", resume_state=resume_state))


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


def test_recover_leaves_the_prepared_transactions_of_other_runs_alone(pg_dsn):
    """Two runs started from one savepoint: a recover of one (any attempt) must not roll
    back a prepared transaction of the other, whose checkpoint may be complete (T4, F4)."""
    sink = rs.sinks.PostgresSink(pg_dsn, "events", create_table=True)
    other = writer(sink, run_id="r2")
    other.write_batch([{"id": 1}])
    txn = other.pre_commit(7)
    writer(sink, run_id="r1", attempt=5).recover([], 3)
    assert rows(pg_dsn, "SELECT gid FROM pg_prepared_xacts") == [(txn.gid,)]
    other.commit(txn)
    assert rows(pg_dsn, "SELECT id FROM events") == [(1,)]


def test_a_restored_transaction_committed_so_long_ago_that_its_status_is_unknown_is_done(pg_dsn):
    """A run started from an old savepoint commits the savepoint's transactions again; when
    the server no longer knows their transaction ids' fate (pg_xact_status is NULL once
    the commit log is truncated) they were committed: a restorable checkpoint's
    transactions are only ever committed (T2)."""
    sink = rs.sinks.PostgresSink(pg_dsn, "events", create_table=True)
    old = PgTxn("rs|j|out|0|r0|1|40", "100", 10)  # xid 100 is older than the server's oldest known
    assert rows(pg_dsn, "SELECT pg_xact_status('100'::xid8)") == [(None,)]
    writer(sink, run_id="r9").recover([old], 40)
    with pytest.raises(rs.StagedDataMissingError, match="was not committed .its status: aborted"):
        aborted = writer(sink, run_id="r8")
        aborted.write_batch([{"id": 1}])
        txn = aborted.pre_commit(1)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"ROLLBACK PREPARED '{txn.gid}'")
        aborted.commit(txn)


def test_upsert_never_waits_for_its_own_prepared_transactions(pg_dsn, monkeypatch):
    """Checkpoint 1 is aborted: its prepared transaction holds key a's row lock. The next
    epoch writes a again and (a buffer of 2 keys) flushes before anyone knows 1's fate:
    the write of a waits in the writer, not on the lock. C6a then says 1 was aborted
    before barrier 2: the writer rolls 1 back and writes its rows (those not written
    again since) in 2. Later a flush comes before checkpoint 2's commit does: a waits
    again, until the commit releases it."""
    from raystream.connectors.postgres import writer as _postgres_writer

    monkeypatch.setattr(_postgres_writer, "_UPSERT_BUFFER", 2)
    sink = rs.sinks.PostgresSink(pg_dsn, "totals", mode="upsert", key="k", columns=("k", "v"), create_table=True)
    w = writer(sink)
    w.write_batch([("a", 1), ("b", 1)])
    t1 = w.pre_commit(1)  # aborted: no manifest 1 is ever written
    w.write_batch([("a", 2), ("c", 2)])  # flushes: a is held by t1, c is written
    assert w.abort(t1) is True  # C6a, before barrier 2: rolled back, its rows taken into the open epoch
    t2 = w.pre_commit(2)
    assert w.snapshot() is None  # nothing is carried past a barrier
    w.write_batch([("a", 3), ("d", 3)])  # flushes before checkpoint 2's commit: a is held by t2
    assert rows(pg_dsn, "SELECT gid FROM pg_prepared_xacts") == [(t2.gid,)]
    w.commit(t2)  # checkpoint 2 completes
    assert sorted(rows(pg_dsn, "SELECT k, v FROM totals")) == [("a", 2), ("b", 1), ("c", 2)]
    w.commit(w.pre_commit(3))
    assert sorted(rows(pg_dsn, "SELECT k, v FROM totals")) == [("a", 3), ("b", 1), ("c", 2), ("d", 3)]
    assert w.close() == {"rows": 6}


@pytest.mark.parametrize("story", ["commit_arrives_first", "commit_arrives_late", "checkpoint_1_aborted"])
def test_upsert_records_naming_other_columns_leave_what_each_set(pg_dsn, story):
    """An upsert sets only the columns a record names. A row that waits for a lock (or
    comes back from an aborted transaction) is merged with later rows of its key by
    column, so the table ends as the records, in order, would leave it: (a, 2, x)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (k text PRIMARY KEY, v bigint, w text)")
    w = writer(rs.sinks.PostgresSink(pg_dsn, "t", mode="upsert", key="k"), run_id=story)
    w.write_batch([{"k": "a", "v": 0, "w": "old"}])
    t1 = w.pre_commit(1)
    if story == "commit_arrives_first":
        w.commit(t1)
    w.write_batch([{"k": "a", "v": 1, "w": "x"}])
    w.write_batch([{"k": "a", "v": 2}])  # another column set: the buffer flushes
    if story == "commit_arrives_late":
        w.commit(t1)  # C6 of 1, before barrier 2 (C6a)
    if story == "checkpoint_1_aborted":
        assert w.abort(t1)  # C6a: 1 was aborted
    w.commit(w.pre_commit(2))
    assert rows(pg_dsn, "SELECT k, v, w FROM t") == [("a", 2, "x")]
    w.close()


def test_a_pre_commit_on_top_of_an_unsettled_transaction_is_refused(pg_dsn, monkeypatch):
    """C6a guarantees that the previous checkpoint is settled before the next pre-commit;
    a writer driven without it says so instead of waiting for its own lock."""
    from raystream.connectors.postgres import writer as _postgres_writer

    monkeypatch.setattr(_postgres_writer, "_UPSERT_BUFFER", 1)
    sink = rs.sinks.PostgresSink(pg_dsn, "totals", mode="upsert", key="k", columns=("k", "v"), create_table=True)
    w = writer(sink)
    w.write_batch([("a", 1)])
    t1 = w.pre_commit(1)
    w.write_batch([("a", 2)])
    with pytest.raises(rs.SinkError, match=r"began before an earlier prepared transaction .* C6a"):
        w.pre_commit(2)
    w.commit(t1)
    w.commit(w.pre_commit(3))
    assert rows(pg_dsn, "SELECT k, v FROM totals") == [("a", 2)]


def test_a_full_prepared_transaction_table_is_said_as_itself_with_what_to_set(pg_dsn):
    sink = rs.sinks.PostgresSink(pg_dsn, "events", create_table=True)
    w = writer(sink)
    limit = int(rows(pg_dsn, "SHOW max_prepared_transactions")[0][0])
    held, error = [], None
    try:
        for n in range(limit + 1):  # the server's limit, for all its databases
            w.write_batch([{"id": n}])
            try:
                held.append(w.pre_commit(n + 1))
            except rs.SinkError as exc:
                error = exc
                break
        assert error is not None and "maximum number of prepared transactions reached" in str(error), error
        assert f"max_prepared_transactions = {limit}" in str(error) and "postgresql.conf" in str(error)
        assert "lost its connection" not in str(error)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            for txn in held:
                conn.execute(f"ROLLBACK PREPARED '{txn.gid}'")


def test_the_check_counts_every_postgres_sink_of_the_job_and_the_tolerated_aborts(pg_dsn):
    """Each exactly-once sink subtask holds up to tolerable_failures + 2 prepared
    transactions at once (the aborted checkpoints', the one in flight and the previous
    one until its commit arrives), and the limit is the server's, for all sinks on it."""
    job = rs.Job("j", parallelism=8, checkpoint=rs.CheckpointConfig(tolerable_failures=6))
    rows_ = job.source("s", rs.sources.SequenceSource(10)).map("row", lambda i: {"id": i})
    rows_.sink("a", rs.sinks.PostgresSink(pg_dsn, "a", create_table=True))
    rows_.sink("b", rs.sinks.PostgresSink(pg_dsn, "b", create_table=True), parallelism=1)
    graph = job.freeze()
    step = next(s for s in graph.steps if s.step_id == "a")
    # 8 x 8 for sink a alone would fit in the test server's 64; with sink b's 1 x 8 it does not
    with pytest.raises(rs.SinkError, match=r"max_prepared_transactions = 64; this job can hold 72 prepared "
                                           r"transactions at once"):
        step.sink.check(job_name="j", step_id="a", parallelism=8, exactly_once=True, job=graph)


def test_the_check_counts_a_dead_letter_postgres_sink_a_writer_per_chain_subtask(pg_dsn):
    """Dead letters are written by every subtask of every chain: 13 here, 5 prepared
    transactions each, 65 of the server's 64. The job is refused before it starts."""
    job = rs.Job("dl", parallelism=13, errors=rs.ErrorPolicy.dead_letter(
        rs.sinks.PostgresSink(pg_dsn, "dead", create_table=True)))
    job.source("s", rs.sources.SequenceSource(10)).map("row", lambda i: {"id": i}).sink("out", rs.sinks.CollectSink())
    with pytest.raises(rs.SinkError, match=r"'dead letters'.*this job can hold 65 prepared transactions at once"):
        job.run()


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
    with pytest.raises(rs.SinkError, match=r"max_prepared_transactions = 64; this job can hold 200 prepared"):
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
