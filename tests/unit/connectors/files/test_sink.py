"""Sinks write whole files that readers of the directory can see."""
import pyarrow as pa
import pytest

from raystream.errors import JobDefinitionError, SinkError
from raystream.sinks import CollectSink, FileSink, SinkContext, read_files


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_file_sink_writes_parts_readers_see(tmp_path, fmt):
    sink = FileSink(str(tmp_path), format=fmt, rows_per_file=3, roll="checkpoint")
    w = sink.build_writer(SinkContext("out", 0, 1))
    w.write_batch([{"a": 1}, {"a": 2}])
    w.write_batch(pa.RecordBatch.from_pylist([{"a": 3}, {"a": 4}]))
    w.write_batch([{"a": 5}])
    assert w.close() == {"files": 2}
    (tmp_path / "_staging").write_text("not output")
    (tmp_path / ".hidden").write_text("not output")
    assert sorted(r["a"] for r in read_files(str(tmp_path), format=fmt)) == [1, 2, 3, 4, 5]


def test_parquet_takes_batches_whose_columns_come_in_another_order(tmp_path):
    """Dict records name their fields in any order: one file holds them by column name."""
    w = FileSink(str(tmp_path), format="parquet").build_writer(SinkContext("out", 0, 1))
    w.write_batch([{"a": 1, "b": "x"}])
    w.write_batch([{"b": "y", "a": 2}])
    w.write_batch([{"a": 3, "b": "z", "c": 1.5}])
    w.close()
    assert read_files(str(tmp_path), format="parquet") == [{"a": 1, "b": "x", "c": None}, {"a": 2, "b": "y", "c": None},
                                                            {"a": 3, "b": "z", "c": 1.5}]


def test_two_runs_into_one_directory_never_overwrite(tmp_path):
    for run in range(2):
        w = FileSink(str(tmp_path)).build_writer(SinkContext("out", 0, 1))
        w.write_batch([run])
        w.close()
    assert sorted(r["value"] for r in read_files(str(tmp_path))) == [0, 1]


def test_collect_sink_keep_last_needs_pairs():
    w = CollectSink(keep="last").build_writer(SinkContext("o", 0, 1))
    w.write_batch([("a", 1), ("b", 1), ("a", 2)])
    assert sorted(w.close()) == [("a", 2), ("b", 1)]
    with pytest.raises(SinkError, match=r"\(key, value\) records"):
        w.write_batch([1, 2])


def test_sink_argument_checks():
    with pytest.raises(JobDefinitionError):
        FileSink("d", format="csv")
    with pytest.raises(JobDefinitionError):
        CollectSink(keep="first")


def staged(tmp_path, step_id, subtask, run_id, attempt, checkpoint_id, records):
    """A transactional writer that staged `records` for `checkpoint_id`; returns (writer, txn)."""
    w = FileSink(str(tmp_path), rows_per_file=100, roll="checkpoint").build_writer(
        SinkContext(step_id, subtask, 2, transactional=True, run_id=run_id, attempt=attempt))
    w.write_batch(records)
    return w, w.pre_commit(checkpoint_id)


def test_recover_touches_only_its_own_step_subtask_and_run(tmp_path):
    # Step "out" subtask 1 and step "out-0001" subtask 0 once shared the prefix "out-0001-".
    mine, mine_txn = staged(tmp_path, "out", 1, "run-a", 1, 5, [1])
    neighbour, neighbour_txn = staged(tmp_path, "out-0001", 0, "run-a", 1, 5, [2])
    other_run, other_txn = staged(tmp_path, "out", 1, "run-b", 1, 5, [3])
    neighbour.commit(neighbour_txn)
    other_run.commit(other_txn)
    before = sorted(p.name for p in tmp_path.iterdir())
    restored, _ = staged(tmp_path, "out", 1, "run-a", 2, 4, [])  # attempt 2 restores checkpoint 4
    restored.recover([], 4)
    after = sorted(p.name for p in tmp_path.iterdir())
    assert set(before) - set(after) == {mine_txn.files[0][0]}  # only its own staged file is aborted
    assert sorted(r["value"] for r in read_files(str(tmp_path))) == [2, 3]


def test_a_late_recover_of_an_older_attempt_destroys_nothing_newer(tmp_path):
    new, new_txn = staged(tmp_path, "out", 0, "run", 3, 7, [7])  # attempt 3 staged checkpoint 7
    done, done_txn = staged(tmp_path, "out", 0, "run", 3, 6, [6])
    done.commit(done_txn)  # ... and committed checkpoint 6
    old, _ = staged(tmp_path, "out", 0, "run", 1, 1, [])
    old.recover([], 0)  # attempt 1's restore of checkpoint 0, landing late
    assert (tmp_path / new_txn.files[0][0]).exists() and read_files(str(tmp_path)) == [{"value": 6}]
    refallback, _ = staged(tmp_path, "out", 0, "run", 4, 1, [])
    refallback.recover([], 5)  # attempt 4 falls back to checkpoint 5: checkpoint 6 is retracted
    assert read_files(str(tmp_path)) == [] and not (tmp_path / new_txn.files[0][0]).exists()


def test_commit_of_missing_staged_data_says_so(tmp_path):
    from raystream.errors import StagedDataMissingError

    w, txn = staged(tmp_path, "out", 0, "run", 1, 1, [1])
    (tmp_path / txn.files[0][0]).unlink()
    with pytest.raises(StagedDataMissingError, match="neither it nor its staged file exists"):
        w.commit(txn)


def test_data_and_renames_are_fsynced_before_a_commit_counts(tmp_path, monkeypatch):
    import os


    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    w, txn = staged(tmp_path, "out", 0, "run", 1, 1, [1])
    pending = str(tmp_path / txn.files[0][0])
    assert any(p.endswith(".tmp") for p in synced) and synced[-1] == str(tmp_path)  # data, then the rename
    synced.clear()
    w.commit(txn)
    assert synced == [str(tmp_path)] and not os.path.exists(pending)  # the commit's renames


def test_a_fall_back_after_fewer_subtasks_retracts_what_the_old_subtasks_it_took_over_committed(tmp_path):
    """Resumed at parallelism 2 from 3, falling back from checkpoint 5 (refused) to 4: new
    subtask i takes over old subtasks j with j % 2 == i, so old subtask 2's files of
    checkpoint 5 are retracted by new subtask 0, and its staged ones aborted."""
    sink = FileSink(str(tmp_path), rows_per_file=100, roll="checkpoint")

    def writer(subtask, parallelism, attempt):
        return sink.build_writer(SinkContext("out", subtask, parallelism, transactional=True, run_id="r",
                                             attempt=attempt))

    restored = {}
    for j in range(3):
        w = writer(j, 3, attempt=1)
        w.write_batch([{"id": j, "checkpoint": 4}])
        restored[j] = w.pre_commit(4)
        w.commit(restored[j])
        w.write_batch([{"id": j, "checkpoint": 5}])
        w.commit(w.pre_commit(5))
        w.write_batch([{"id": j, "checkpoint": 6}])
        w.pre_commit(6)  # staged, never committed
    for i in range(2):
        writer(i, 2, attempt=2).recover([restored[j] for j in range(3) if j % 2 == i], 4)
    assert sorted((r["id"], r["checkpoint"]) for r in read_files(str(tmp_path))) == [(0, 4), (1, 4), (2, 4)]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("_")] == []


@pytest.mark.parametrize("rolling", [False, True])
def test_a_run_from_a_savepoint_may_write_to_another_directory(tmp_path, rolling):
    """The savepoint's transactions and open file are committed (or found committed) where
    they were written; the new run's output goes to its own directory."""
    kwargs = {"roll_size": 1 << 20} if rolling else {"roll": "checkpoint"}
    a_dir, b_dir = str(tmp_path / "a"), str(tmp_path / "b")
    a = FileSink(a_dir, **kwargs).build_writer(SinkContext("out", 0, 1, transactional=True, run_id="r1", attempt=1))
    a.write_batch([{"id": i} for i in range(5)])
    txn = a.pre_commit(7)  # the final checkpoint: the savepoint
    savepoint_state, pending = a.snapshot(), [txn] if txn is not None else []
    for t in pending:
        a.commit(t)
    a.close()
    b = FileSink(b_dir, **kwargs).build_writer(SinkContext("out", 0, 1, transactional=True, run_id="r2", attempt=1,
                                                           resume_state=savepoint_state))
    b.recover(pending, 7)
    b.write_batch([{"id": 5}])
    final = b.pre_commit(8)
    if final is not None:
        b.commit(final)
    b.close()
    assert sorted(r["id"] for r in read_files(a_dir)) == [0, 1, 2, 3, 4]
    assert sorted(r["id"] for r in read_files(b_dir)) == [5]
