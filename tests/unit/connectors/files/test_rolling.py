"""FileSink's default rolling policy (128 MiB or 60 s) for JSON lines and Parquet, and the
Parquet part kept as per-checkpoint segments: rolled, restored, cut back, adopted. No Ray:
writers are driven through the sink contract as the subtask drives them (T1, T3, T4)."""
from __future__ import annotations

import datetime
import itertools
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raystream.connectors.files import rolling_writer
from raystream.connectors.files.parquet_parts import ParquetPart
from raystream.errors import JobDefinitionError, SinkError, StagedDataMissingError
from raystream.sinks import FileSink, SinkContext, read_files

FORMATS = ["jsonl", "parquet"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(rolling_writer, "_clock", c)
    return c


def writer(directory, *, run="r1", attempt=1, subtask=0, parallelism=1, state=None, **options):
    return FileSink(str(directory), **options).build_writer(
        SinkContext("out", subtask, parallelism, transactional=True, run_id=run, attempt=attempt, resume_state=state))


def ids(directory, fmt="jsonl") -> list[int]:
    return sorted(r["id"] for r in read_files(str(directory), format=fmt))


def names(directory) -> list[str]:
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def hidden(directory) -> list[str]:
    return [n for n in names(directory) if n.startswith("_")]


def checkpoint(w, n: int) -> None:
    """Barrier n and its completion."""
    txn = w.pre_commit(n)
    if txn is not None:
        w.commit(txn)


# --- the policy -------------------------------------------------------------------------------


def test_the_default_rolls_at_128_mib_or_60_seconds():
    sink = FileSink("d")
    assert (sink.roll_size, sink.roll_interval, sink.rolling) == (128 << 20, 60.0, True)
    assert FileSink("d", format="parquet").rolling


@pytest.mark.parametrize("options", [{"roll": "checkpoint"}, {"roll_size": None, "roll_interval": None}])
def test_one_file_per_checkpoint_is_still_there(options):
    sink = FileSink("d", **options)
    assert not sink.rolling and sink.roll_size is None and sink.roll_interval is None


def test_either_limit_may_be_left_out():
    assert (FileSink("d", roll_interval=None).roll_size, FileSink("d", roll_size=None).roll_interval) == (128 << 20, 60.0)


@pytest.mark.parametrize("options", [{"roll": "sometimes"}, {"roll": "checkpoint", "roll_size": 10},
                                     {"roll_interval": True}, {"roll_size": 0}, {"roll_interval": -1}])
def test_a_policy_that_says_nothing_clear_is_refused(options):
    with pytest.raises(JobDefinitionError, match="FileSink roll"):
        FileSink("d", **options)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_part_rolls_after_roll_interval_and_is_committed_with_the_next_checkpoint(tmp_path, clock, fmt):
    w = writer(tmp_path, format=fmt)
    for n in range(1, 60):  # a checkpoint a second, for 59 s
        w.write_batch([{"id": n}])
        checkpoint(w, n)
        clock.now += 1.0
    assert ids(tmp_path, fmt) == []  # nothing visible before the part rolls
    clock.now += 1.0
    w.write_batch([{"id": 60}])
    checkpoint(w, 60)  # open for 60 s at this barrier: rolled, and committed with it
    assert ids(tmp_path, fmt) == list(range(1, 61)) and hidden(tmp_path) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_files_per_hour_with_the_defaults_at_one_second_checkpoints(tmp_path, clock, fmt):
    """With 1 s checkpoints a subtask commits one file a minute, not one a second. Fewer
    checkpoints here: four minutes (a Parquet segment a second is written, then merged)."""
    w = writer(tmp_path, format=fmt)
    for n in range(1, 241):
        w.write_batch([{"id": n}])
        checkpoint(w, n)
        clock.now += 1.0
    w.close()
    committed = [n for n in names(tmp_path) if n.startswith("part-")]
    assert len(committed) == 4, committed
    assert ids(tmp_path, fmt) == list(range(1, 241)) and hidden(tmp_path) == []


def test_per_checkpoint_files_are_one_a_checkpoint(tmp_path, clock):
    w = writer(tmp_path, roll="checkpoint")
    for n in range(1, 61):
        w.write_batch([{"id": n}])
        checkpoint(w, n)
    assert len(names(tmp_path)) == 60


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_part_rolls_at_roll_size(tmp_path, clock, fmt):
    w = writer(tmp_path, format=fmt, roll_size=2000, rows_per_file=10)
    for n in range(1, 21):
        w.write_batch([{"id": n * 10 + i, "pad": "x" * 20} for i in range(10)])
        checkpoint(w, n)
    w.close()
    committed = [n for n in names(tmp_path) if n.startswith("part-")]
    assert 2 <= len(committed) < 20, committed  # several checkpoints a file, several files
    assert ids(tmp_path, fmt) == sorted(n * 10 + i for n in range(1, 21) for i in range(10))


# --- Parquet segments ----------------------------------------------------------------------------


def test_an_open_parquet_part_is_segments_one_a_checkpoint_that_readers_never_see(tmp_path, clock):
    w = writer(tmp_path, format="parquet")
    for n in (1, 2, 3):
        w.write_batch([{"id": n}])
        checkpoint(w, n)
    (part,) = w.snapshot()["in_progress"]
    assert isinstance(part, ParquetPart) and [rows for _, rows in part.segments] == [1, 1, 1]
    assert sorted(n for n, _ in part.segments) == hidden(tmp_path) and read_files(str(tmp_path), format="parquet") == []


def test_a_restore_commits_the_open_parquet_part_as_its_checkpoint_recorded_it(tmp_path, clock):
    w = writer(tmp_path, format="parquet")
    w.write_batch([{"id": 1}, {"id": 2}])
    checkpoint(w, 1)
    state = w.snapshot()
    w.write_batch([{"id": 3}])
    w.pre_commit(2)  # then the process dies: checkpoint 2 never completes
    again = writer(tmp_path, format="parquet", attempt=2, state=state)
    again.recover([], 1)
    assert ids(tmp_path, "parquet") == [1, 2] and hidden(tmp_path) == []
    writer(tmp_path, format="parquet", attempt=3, state=state).recover([], 1)  # and once more: done is done
    assert ids(tmp_path, "parquet") == [1, 2]


def test_a_fall_back_cuts_a_committed_parquet_part_back_to_the_rows_its_checkpoint_recorded(tmp_path, clock):
    """Checkpoint 2 rolled and committed the part; it is refused later, and the restore of
    checkpoint 1 keeps only the rows of the segments checkpoint 1 recorded."""
    w = writer(tmp_path, format="parquet")
    w.write_batch([{"id": 1}])
    checkpoint(w, 1)
    state = w.snapshot()
    w.write_batch([{"id": 2}])
    clock.now += 61
    checkpoint(w, 2)
    assert ids(tmp_path, "parquet") == [1, 2]
    writer(tmp_path, format="parquet", attempt=2, state=state).recover([], 1)
    assert ids(tmp_path, "parquet") == [1] and hidden(tmp_path) == []


def test_a_rolled_parquet_part_commits_once_however_often_its_commit_runs(tmp_path, clock):
    w = writer(tmp_path, format="parquet")
    w.write_batch([{"id": 1, "a": "x"}])
    w.pre_commit(1)
    w.write_batch([{"id": 2, "a": "y"}])
    clock.now += 61
    txn = w.pre_commit(2)
    w.commit(txn)
    w.commit(txn)
    writer(tmp_path, format="parquet", attempt=2).recover([txn], 2)
    assert read_files(str(tmp_path), format="parquet") == [{"id": 1, "a": "x"}, {"id": 2, "a": "y"}]
    (committed,) = names(tmp_path)
    assert pq.ParquetFile(tmp_path / committed).metadata.num_row_groups == 2  # a row group per segment


def test_a_rolled_parquet_part_whose_segments_are_gone_says_so(tmp_path, clock):
    w = writer(tmp_path, format="parquet")
    w.write_batch([{"id": 1}])
    clock.now += 61
    txn = w.pre_commit(1)
    for name in hidden(tmp_path):
        os.unlink(tmp_path / name)
    with pytest.raises(StagedDataMissingError, match="FileSink cannot commit"):
        w.commit(txn)


def test_parquet_rows_that_make_no_table_are_refused_before_a_checkpoint_covers_them(tmp_path, clock):
    w = writer(tmp_path, format="parquet")
    w.write_batch([{"id": 1}])
    w.write_batch([{"id": "one"}])  # one segment of both: no table holds them
    with pytest.raises(SinkError, match="rows of sink step 'out' do not make one table"):
        w.pre_commit(1)


@pytest.mark.parametrize("options", [{}, {"rows_per_file": 2}, {"roll": "checkpoint"}], ids=repr)
def test_arrow_batches_of_schemas_no_table_holds_go_to_parquet_files_of_their_own(tmp_path, clock, options):
    """Review 48: a window fires windows of keys no one column holds ("5" and 5) as a batch
    per kind of key, and a Parquet sink made one table of its buffer: SinkError, and the
    job failed there after every restore. Each schema is a file of its own (review 48b: not
    each run of one, which made a file per fire)."""
    keys = [("5", pa.string()), (5, pa.int64()), ("6", pa.string()), (-1, pa.int8()), (2**63, pa.uint64())]
    w = writer(tmp_path, format="parquet", **options)
    for i, (key, kind) in enumerate(keys):
        w.write_batch(pa.RecordBatch.from_pydict({"id": [i], "k": [key]},
                                                 schema=pa.schema([("id", pa.int64()), ("k", kind)])))
    clock.now += 61
    txn = w.pre_commit(1)
    state = w.snapshot()
    w.commit(txn)
    writer(tmp_path, format="parquet", attempt=2, state=state, **options).recover([txn], 1)
    rows = [r for n in names(tmp_path) for r in pq.read_table(tmp_path / n).to_pylist()]
    assert hidden(tmp_path) == [] and sorted((r["id"], r["k"]) for r in rows) == [(i, k) for i, (k, _) in enumerate(keys)]
    assert len(names(tmp_path)) == (5 if options.get("rows_per_file") == 2 else 4)  # string, int64, int8, uint64


_TYPED = {  # an Arrow type and a value of it that another type may not hold
    "int64": (pa.int64(), 2**62 + 1), "uint64": (pa.uint64(), 2**64 - 1), "double": (pa.float64(), 0.5),
    "int32": (pa.int32(), 7), "string": (pa.string(), "a"), "bool": (pa.bool_(), True),
    "timestamp[s]": (pa.timestamp("s"), datetime.datetime(9000, 1, 1)),
    "timestamp[ns]": (pa.timestamp("ns"), datetime.datetime(2020, 1, 1)),
}


@pytest.mark.parametrize("first, second", list(itertools.product(_TYPED, _TYPED)))
def test_whatever_a_parquet_checkpoint_accepts_its_commit_and_restore_commit_once(tmp_path, clock, first, second):
    """Rows of one type at checkpoint 1, of another at checkpoint 2 (the part rolls): a
    pre_commit that accepts them means the commit and every restore of checkpoint 2
    succeed, each row committed once, with its own type (another schema is another part:
    no merge casts, which could fail after the checkpoint completed)."""
    def batch(row_id, name):
        kind, value = _TYPED[name]
        return pa.RecordBatch.from_pydict({"id": [row_id], "x": [value]},
                                          schema=pa.schema([("id", pa.int64()), ("x", kind)]))

    w = writer(tmp_path, format="parquet")
    w.write_batch(batch(1, first))
    checkpoint(w, 1)
    w.write_batch(batch(2, second))
    clock.now += 61
    txn = w.pre_commit(2)
    state = w.snapshot()  # a part of the second type may be open still: the restore commits it
    w.commit(txn)
    writer(tmp_path, format="parquet", attempt=2, state=state).recover([txn], 2)
    files = [pq.read_table(tmp_path / n) for n in names(tmp_path)]
    assert hidden(tmp_path) == [] and ids(tmp_path, "parquet") == [1, 2]
    assert [t.num_rows for t in files] == ([2] if first == second else [1, 1])  # a file per type


def test_a_run_from_another_runs_checkpoint_merges_its_open_parquet_part_into_a_file_of_its_own(tmp_path, clock):
    a = writer(tmp_path, format="parquet", run="r1")
    a.write_batch([{"id": 1}])
    checkpoint(a, 1)
    state = a.snapshot()
    a.write_batch([{"id": 2}])
    checkpoint(a, 2)  # r1 goes on
    b = writer(tmp_path, format="parquet", run="r2", state=state)
    b.recover([], 1)
    b.recover([], 1)  # twice: one copy
    r2 = [n for n in names(tmp_path) if n.startswith("part-out@0000@r2@")]
    assert len(r2) == 1 and sorted(r["id"] for r in read_files(str(tmp_path), format="parquet")) == [1]
    assert len([n for n, _ in state["in_progress"][0].segments if os.path.exists(tmp_path / n)]) == 1  # r1's, kept
    a.close()  # r1 ends: its part, with both checkpoints' rows, is committed by r1
    assert ids(tmp_path, "parquet") == [1, 1, 2]  # B re-emits what A committed after B's origin, as documented


@pytest.mark.parametrize("before, after", [("checkpoint", "policy"), ("policy", "checkpoint")])
def test_a_checkpoint_taken_with_the_other_policy_restores(tmp_path, clock, before, after):
    """A job of 0.4 (one file per checkpoint) resumed with the rolling default, and a
    rolling job switched to roll="checkpoint": the restore commits what the checkpoint
    holds, and aborts what it does not."""
    w = writer(tmp_path, roll=before)
    w.write_batch([{"id": 1}])
    checkpoint(w, 1)
    w.write_batch([{"id": 2}])
    txn = w.pre_commit(2)  # checkpoint 2 completes, but the process dies before it commits
    state = w.snapshot()
    w.write_batch([{"id": 3}])
    w.pre_commit(3)  # never completes
    again = writer(tmp_path, roll=after, attempt=2, state=state)
    again.recover([txn] if txn is not None else [], 2)
    assert ids(tmp_path) == [1, 2] and hidden(tmp_path) == []
    again.write_batch([{"id": 3}])
    checkpoint(again, 3)
    again.close()
    assert ids(tmp_path) == [1, 2, 3]


# --- compaction -----------------------------------------------------------------------------------


def test_compaction_leaves_rolled_parquet_parts_that_a_retained_checkpoint_commits_again(tmp_path, clock, monkeypatch):
    """Two rolled parts, of checkpoints 1-2 and 3-4, committed with 2 and 4; checkpoint 4
    is retained (its restore commits the part of 3-4 again, whose segments are gone). Both
    parts' names carry a checkpoint before 4, yet compaction must take neither: the
    restore of 4 then commits the same rows once."""
    from raystream.connectors.files import compaction

    monkeypatch.setenv("RAYSTREAM_CHECKPOINT_KEY", "k" * 32)
    monkeypatch.setattr(compaction, "_keep_from", lambda root, runs: {run: 4 for run in runs})
    w = writer(tmp_path, format="parquet")
    txn = None
    for n in (1, 2, 3, 4):
        w.write_batch([{"id": n}])
        if n % 2 == 0:
            clock.now += 61
        txn = w.pre_commit(n)
        if txn is not None:
            w.commit(txn)
    assert len(names(tmp_path)) == 2 and txn is not None
    done = compaction.compact_files(str(tmp_path), checkpoints=str(tmp_path / "checkpoints"))
    assert done.files_in == 0 and len(names(tmp_path)) == 2
    writer(tmp_path, format="parquet", attempt=2).recover([txn], 4)
    assert ids(tmp_path, "parquet") == [1, 2, 3, 4]


def test_a_restore_removes_the_temp_file_of_a_merge_its_subtask_died_in_and_no_one_elses(tmp_path, clock, monkeypatch):
    """Killed after the merged file's temporary copy is written, before its rename: the
    restore commits the part and removes that temp file; temp files of another run, of
    another subtask and of a later attempt stay."""
    from raystream import _storage

    w = writer(tmp_path, format="parquet")
    w.write_batch([{"id": i} for i in range(100)])
    w.pre_commit(1)
    clock.now += 61
    txn = w.pre_commit(2)
    real = os.replace

    class Killed(BaseException):
        pass

    def dies(src, dst):
        if os.path.basename(dst).startswith("part-"):
            raise Killed()  # SIGKILL here: the temporary file is written, not renamed
        return real(src, dst)

    monkeypatch.setattr(_storage.os, "replace", dies)
    with pytest.raises(Killed):
        w.commit(txn)
    monkeypatch.setattr(_storage.os, "replace", real)
    (dead,) = [n for n in names(tmp_path) if n.startswith(".")]
    others = [f".part-out@0000@r9@000000000001@000001@abc-000000-rolled.parquet.{'a' * 32}.tmp",
              f".part-out@0001@r1@000000000001@000001@abc-000000-rolled.parquet.{'b' * 32}.tmp",
              f"._inprogress-out@0000@r1@000002@abc-000000-s000000.parquet.{'c' * 32}.tmp"]
    for name in others:
        (tmp_path / name).write_bytes(b"x")
    writer(tmp_path, format="parquet", attempt=2, parallelism=2).recover([txn], 2)  # subtask 1 is another's
    assert ids(tmp_path, "parquet") == list(range(100))
    assert sorted(n for n in names(tmp_path) if n.startswith(".")) == sorted(others) and dead not in names(tmp_path)


def test_a_direct_parquet_writer_closed_with_rows_of_several_schemas_writes_them_all(tmp_path, clock):
    """Not transactional (at-least-once): the rows of another schema than the open part's,
    left over when it closed at the end of the input, were never written."""
    w = FileSink(str(tmp_path), format="parquet").build_writer(
        SinkContext("out", 0, 1, transactional=False, run_id="r1", attempt=1))
    for i, (key, kind) in enumerate([("5", pa.string()), (5, pa.int64()), ("6", pa.string())]):
        w.write_batch(pa.RecordBatch.from_pydict({"id": [i], "k": [key]},
                                                 schema=pa.schema([("id", pa.int64()), ("k", kind)])))
    w.close()
    assert sorted((r["id"], r["k"]) for n in names(tmp_path) for r in pq.read_table(tmp_path / n).to_pylist()) == \
        [(0, "5"), (1, 5), (2, "6")]
