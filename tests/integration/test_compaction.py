"""Compaction of committed Parquet files, without Ray: a reader sees every record once at
every step of a compaction, locally and on S3, and a compaction that died part way is
finished by the next."""
from __future__ import annotations

import collections

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raystream import compaction
from raystream._storage import open_storage
from raystream.sinks import compact_files, parquet_bytes, read_files


@pytest.fixture(params=["local", "s3"])
def directory(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    return f"s3://{request.getfixturevalue('s3_bucket')}/out"


def write_small_files(directory: str, files: int, rows: int) -> None:
    storage = open_storage(directory)
    for f in range(files):
        storage.put(f"part-small-{f:03d}.parquet", parquet_bytes([[{"id": f * rows + r} for r in range(rows)]]))


class Watching:
    """A storage that reads the directory back after every change a compaction makes."""

    def __init__(self, storage, check):
        self._storage, self._check = storage, check

    def __getattr__(self, name):
        attr = getattr(self._storage, name)
        if name not in ("put", "promote", "delete"):
            return attr

        def changed(*args, **kwargs):
            result = attr(*args, **kwargs)
            self._check(name)
            return result
        return changed


def test_readers_see_every_record_once_at_every_step(directory, monkeypatch):
    write_small_files(directory, files=20, rows=50)
    steps = collections.Counter()

    def check(step: str) -> None:
        ids = sorted(r["id"] for r in read_files(directory, format="parquet"))
        assert ids == list(range(1000)), f"after a {step}: {len(ids)} rows"
        steps[step] += 1

    real = compaction.open_storage
    monkeypatch.setattr(compaction, "open_storage", lambda uri: Watching(real(uri), check))
    done = compact_files(directory, target_size=2_000)
    assert done.files_in == 20 and done.rows == 1000 and 2 <= done.files_out < 10
    assert steps["promote"] == done.files_out  # checked right after each merged file was published
    names = open_storage(directory).list("")
    assert all(n.startswith("part-compacted-") for n in names), names


def test_a_compaction_that_died_after_publishing_is_finished_by_the_next(directory):
    write_small_files(directory, files=4, rows=10)
    storage = open_storage(directory)
    storage.put("_compaction-dead.json", b'{"output": "part-compacted-dead.parquet", '
                                         b'"inputs": ["part-small-000.parquet", "part-small-001.parquet"]}')
    table = pa.concat_tables([pq.read_table(pa.BufferReader(storage.get(f"part-small-00{i}.parquet")))
                              for i in (0, 1)])
    storage.put("part-compacted-dead.parquet", parquet_bytes([table.to_batches()[0], table.to_batches()[1]]))
    assert sorted(r["id"] for r in read_files(directory, format="parquet")) == list(range(40))
    storage.put("_compacting-orphan.parquet", b"never published")
    compact_files(directory, min_files=10)  # nothing to merge: only the earlier one is finished
    assert storage.list("") == ["part-compacted-dead.parquet", "part-small-002.parquet", "part-small-003.parquet"]
    assert sorted(r["id"] for r in read_files(directory, format="parquet")) == list(range(40))
