"""Recoverable part files (FileSink's rolling policy) without Ray: locally and on S3
(moto server). What a checkpoint recorded is what a commit makes visible, exactly."""
from __future__ import annotations

import os

import pytest

from raystream.connectors.files.parts import PART_SIZE, LocalPart, S3Part, commit_part, open_part
from raystream._storage import open_storage


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return open_storage(str(tmp_path / "out"))
    bucket = request.getfixturevalue("s3_bucket")
    return open_storage(f"s3://{bucket}/out")


def test_a_commit_makes_visible_what_the_checkpoint_recorded_and_nothing_after(storage):
    part = open_part(storage, "_inprogress-a", "part-a", 0.0)
    first = os.urandom(PART_SIZE + 1000)  # one full S3 part and a tail
    part.write(first)
    recorded = part.persist(3)
    part.write(b"written after the checkpoint, then the process died")
    assert storage.list("part-") == []  # nothing visible before the commit
    commit_part(storage, recorded)
    assert storage.get("part-a") == first
    commit_part(storage, recorded)  # a restore may commit it again: done is done
    assert storage.list("_") == []  # no staged file left behind
    if isinstance(recorded, S3Part):  # one part uploaded, the rest in the recorded part itself
        assert len(recorded.parts) == 1 and recorded.tail == first[PART_SIZE:]
    else:
        assert isinstance(recorded, LocalPart) and recorded.length == len(first)


def test_a_closed_part_commits_whole(storage):
    part = open_part(storage, "_inprogress-b", "part-b", 0.0)
    chunks = [os.urandom(3 * 1024 * 1024) for _ in range(4)]  # 12 MiB in 3 MiB writes
    for i, chunk in enumerate(chunks):
        part.write(chunk)
        part.persist(i + 1)
    closed = part.close()
    commit_part(storage, closed)
    assert storage.get("part-b") == b"".join(chunks)
    assert storage.list("_") == []


def test_a_part_whose_data_is_gone_cannot_be_committed(storage):
    part = open_part(storage, "_inprogress-c", "part-c", 0.0)
    part.write(b"x" * 10)
    recorded = part.persist(1)
    if isinstance(recorded, LocalPart):
        os.unlink(storage._path("_inprogress-c"))
    else:
        import boto3

        boto3.client("s3").abort_multipart_upload(Bucket=storage.bucket, Key=storage._key("part-c"),
                                                  UploadId=recorded.upload_id)
    with pytest.raises(FileNotFoundError):
        commit_part(storage, recorded)


# --- the rolling writer through aborted checkpoints and fall-backs -------------------------


@pytest.fixture(params=["local", "s3"])
def directory(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "rolled")
    return f"s3://{request.getfixturevalue('s3_bucket')}/rolled"


def rolling_writer(sink, attempt: int, resume_state=None, subtask: int = 0, parallelism: int = 1):
    from raystream.sinks import SinkContext

    return sink.build_writer(SinkContext("out", subtask, parallelism, transactional=True, resume_state=resume_state,
                                         run_id="r1", attempt=attempt, job_name="j"))


def ids_visible(directory: str) -> list[int]:
    from raystream.sinks import read_files

    return sorted(r["id"] for r in read_files(directory))


def test_a_fall_back_cuts_a_rolled_and_committed_file_back_to_the_restored_checkpoint(directory):
    """The open file is recorded at 10 records in checkpoint 5, rolls at 20 and is committed
    with checkpoint 6. 6 is refused, the job falls back to 5: records 10-19 are replayed
    into a new file, so the committed file must hold 10 records again."""
    from raystream.sinks import FileSink

    sink = FileSink(directory, roll_size=150)  # ten records are 100 bytes, twenty roll
    w = rolling_writer(sink, attempt=1)
    w.write_batch([{"id": i} for i in range(10)])
    assert w.pre_commit(5) is None
    at_5 = w.snapshot()
    w.write_batch([{"id": i} for i in range(10, 20)])  # rolls
    txn = w.pre_commit(6)
    w.commit(txn)  # checkpoint 6 completed
    assert ids_visible(directory) == list(range(20))
    again = rolling_writer(sink, attempt=2, resume_state=at_5)  # 6 refused: restore 5
    again.recover([], 5)
    again.write_batch([{"id": i} for i in range(10, 20)])  # the replay, into a new file
    assert again.pre_commit(7) is None
    assert again.close() == {"files": 2}  # the file cut back at the restore, and the new one
    assert ids_visible(directory) == list(range(20))


def test_a_restore_after_an_aborted_checkpoint_finds_what_the_complete_one_recorded(directory):
    """Checkpoint 1 completes, 2 is aborted, 3 is taken and the subtask dies before it
    completes: the restore of 1 needs the open file as 1 recorded it."""
    from raystream.sinks import FileSink

    sink = FileSink(directory, roll_size=1 << 30)
    w = rolling_writer(sink, attempt=1)
    for checkpoint in (1, 2, 3):
        w.write_batch([{"id": checkpoint * 10 + i} for i in range(10)])
        assert w.pre_commit(checkpoint) is None
        if checkpoint == 1:
            at_1 = w.snapshot()
    again = rolling_writer(sink, attempt=2, resume_state=at_1)
    again.recover([], 1)
    assert ids_visible(directory) == list(range(10, 20))
    assert again.close() == {"files": 1}
    assert [n for n in open_storage(directory).list("") if n.startswith("_")] == []  # nothing staged is left


def test_a_run_started_from_another_runs_checkpoint_never_touches_its_open_file(directory):
    """Run A has a file open at its checkpoint 1 and goes on writing it; run B starts from
    A's checkpoint 1. B must not commit or cut A's file (A still writes it): locally it
    copies the 10 records checkpoint 1 recorded into a file of its own; on S3, where an
    upload in progress cannot be read, it refuses the start, naming the savepoint way.
    Once A has committed the file, a run from that checkpoint leaves it as it is."""
    from raystream.errors import RestoreError
    from raystream.sinks import FileSink, SinkContext

    def run_writer(sink, run_id, resume_state=None):
        return sink.build_writer(SinkContext("out", 0, 1, transactional=True, resume_state=resume_state,
                                             run_id=run_id, attempt=1, job_name="j"))

    sink = FileSink(directory, roll_size=1 << 30)
    a = run_writer(sink, "rA")
    a.write_batch([{"id": i} for i in range(10)])
    assert a.pre_commit(1) is None
    at_1 = a.snapshot()
    a.write_batch([{"id": i} for i in range(10, 20)])  # A goes on; no checkpoint covers these yet
    b = run_writer(sink, "rB", resume_state=at_1)
    if directory.startswith("s3://"):
        with pytest.raises(RestoreError, match="start from a savepoint"):
            b.recover([], 1)
    else:
        b.recover([], 1)
        b.recover([], 1)  # a restore again copies nothing twice
        assert ids_visible(directory) == list(range(10))  # B's copy of what checkpoint 1 recorded
    assert a.pre_commit(2) is None
    a.close()  # A's checkpoint 2 completes and its stream ends: A's file holds all it wrote
    visible = ids_visible(directory)
    assert visible == (list(range(20)) if directory.startswith("s3://") else sorted(list(range(10)) * 2 + list(range(10, 20))))
    c = run_writer(sink, "rC", resume_state=at_1)
    c.recover([], 1)  # A's file is committed, longer than checkpoint 1 recorded: left alone
    assert ids_visible(directory) == visible
