"""Recoverable part files (FileSink's rolling policy) without Ray: locally and on S3
(moto server). What a checkpoint recorded is what a commit makes visible, exactly."""
from __future__ import annotations

import os

import pytest

from raystream._part_files import PART_SIZE, LocalPart, S3Part, commit_part, delete_tails, open_part
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
    assert storage.list("_") == []  # no tail, no staged file left behind
    if isinstance(recorded, S3Part):
        assert len(recorded.parts) == 1 and recorded.tail is not None
    else:
        assert isinstance(recorded, LocalPart) and recorded.length == len(first)


def test_a_closed_part_commits_whole(storage):
    part = open_part(storage, "_inprogress-b", "part-b", 0.0)
    chunks = [os.urandom(3 * 1024 * 1024) for _ in range(4)]  # 12 MiB in 3 MiB writes
    for i, chunk in enumerate(chunks):
        part.write(chunk)
        part.persist(i + 1)
        delete_tails(storage, "part-b", before=i)
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
