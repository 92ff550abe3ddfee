"""Sources read in batches, report offsets, and resume from them exactly."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raystream.errors import JobDefinitionError, SourceError
from raystream.sources import FileSource, SequenceSource


def drain(part, limit=10_000):
    out = []
    for _ in range(limit):
        batch = part.next_batch()
        if batch is None:
            return out
        out.extend(batch.to_pylist() if isinstance(batch, pa.RecordBatch) else batch)
    raise AssertionError("partition never ended")


def test_sequence_partitions_interleave():
    src = SequenceSource(10, partitions=3)
    parts = [src.build_partition(k, None, 2) for k in src.list_partitions()]
    assert [drain(p) for p in parts] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_sequence_resumes_from_its_offset():
    src = SequenceSource(20, partitions=2)
    part = src.build_partition("1", None, 3)
    first = part.next_batch()
    resumed = src.build_partition("1", part.snapshot(), 3)
    assert first + drain(resumed) == list(range(1, 20, 2))


def test_sequence_rate_limits():
    src = SequenceSource(None, rate=1000)
    part = src.build_partition("0", None, 10_000)
    assert len(part.next_batch()) <= 10  # only what the elapsed time allows
    assert part.next_awake() is not None


def test_sequence_argument_checks():
    with pytest.raises(JobDefinitionError):
        SequenceSource(-1)
    with pytest.raises(JobDefinitionError):
        SequenceSource(5, partitions=0)
    with pytest.raises(JobDefinitionError):
        SequenceSource(5, rate=0)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "a.txt").write_text("".join(f"line {i}\n" for i in range(5000)))
    (tmp_path / "b.txt").write_text("no newline at end")
    (tmp_path / "_hidden.txt").write_text("skip me\n")
    return tmp_path


def test_text_files_one_partition_each(files):
    src = FileSource(str(files / "*.txt"))
    keys = src.list_partitions()
    # A glob, like a directory, lists visible files only: `_pending-...` files of a
    # FileSink and `.tmp` files are uncommitted output, never input.
    (files / ".partial.txt.tmp").write_text("half a line")
    assert [k.rsplit("/", 1)[1] for k in keys] == ["a.txt", "b.txt"]
    assert [k.rsplit("/", 1)[1] for k in FileSource(str(files / "*")).list_partitions()] == ["a.txt", "b.txt"]
    assert drain(src.build_partition(keys[1], None, 100)) == ["no newline at end"]
    assert [k.rsplit("/", 1)[1] for k in FileSource(str(files)).list_partitions()] == ["a.txt", "b.txt"]
    # A file named explicitly is read, whatever its name.
    assert FileSource(str(files / "_hidden.txt")).list_partitions() == [str(files / "_hidden.txt")]


def test_text_resume_from_snapshot_is_exact(files, monkeypatch):
    monkeypatch.setattr("raystream.connectors.files.source._CHUNK", 1000)
    uri = str(files / "a.txt")
    src = FileSource(uri)
    part = src.build_partition(uri, None, 100)
    head = part.next_batch() + part.next_batch()
    resumed = src.build_partition(uri, part.snapshot(), 100)
    assert head + drain(resumed) == [f"line {i}" for i in range(5000)]
    assert part.snapshot()[1] == len(head)  # the line number travels with the offset


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="no file matching"):
        FileSource(str(tmp_path / "nope*.txt")).list_partitions()


def test_bad_format_is_refused():
    with pytest.raises(JobDefinitionError, match="format must be one of"):
        FileSource("x", format="xml")


def test_jsonl_records_and_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"id": 1}\n\n{"id": 2}\n{"id": 3,\n{"id": 4}\n')
    part = FileSource(str(path), format="jsonl").build_partition(str(path), None, 10)
    with pytest.raises(SourceError, match=r"e\.jsonl:4: malformed JSON"):
        part.next_batch()


def test_csv_rows_become_dicts_and_resume_skips_the_header(tmp_path, monkeypatch):
    monkeypatch.setattr("raystream.connectors.files.source._CHUNK", 16)
    path = tmp_path / "t.csv"
    path.write_text("id,name\n" + "".join(f'{i},"n, {i}"\n' for i in range(50)))
    src = FileSource(str(path), format="csv")
    part = src.build_partition(str(path), None, 10)
    head = part.next_batch()
    rest = drain(src.build_partition(str(path), part.snapshot(), 10))
    assert head + rest == [{"id": str(i), "name": f"n, {i}"} for i in range(50)]


def test_csv_wrong_field_count_names_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n3\n")
    part = FileSource(str(path), format="csv").build_partition(str(path), None, 10)
    with pytest.raises(SourceError, match=r"bad\.csv:3: malformed CSV row: 1 fields"):
        part.next_batch()


def test_parquet_batches_and_resume(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": list(range(1000))}), path, row_group_size=300)
    src = FileSource(str(path), format="parquet")
    part = src.build_partition(str(path), None, 128)
    first = part.next_batch()
    assert isinstance(first, pa.RecordBatch) and first.num_rows == 128
    rest = drain(src.build_partition(str(path), part.snapshot(), 128))
    assert [r["x"] for r in first.to_pylist() + rest] == list(range(1000))


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "bin.txt"
    path.write_bytes(b"ok\nfine\n\xff\xfe\n")
    with pytest.raises(SourceError, match=r"bin\.txt:3: not valid UTF-8"):
        FileSource(str(path)).build_partition(str(path), None, 10).next_batch()


def test_jsonl_round_trip_of_values(tmp_path):
    path = tmp_path / "v.jsonl"
    values = [1, "two", [3], {"four": 4}, None]
    path.write_text("".join(json.dumps(v) + "\n" for v in values))
    assert drain(FileSource(str(path), format="jsonl").build_partition(str(path), None, 2)) == values
