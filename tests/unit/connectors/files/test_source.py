"""FileSource reads lines and rows in batches of at most `batch_size`, reports offsets, and
resumes from them exactly."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raystream.errors import JobDefinitionError, SourceError
from raystream.sources import FileSource
from tests.unit.test_sources import drain


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


def test_lines_end_at_newline_only_as_in_arrows_readers(tmp_path):
    """U+2028 inside a JSON string and a form feed in a text line belong to their line."""
    jsonl = tmp_path / "u.jsonl"
    jsonl.write_text(json.dumps({"text": "a\u2028b"}, ensure_ascii=False) + "\n" + '{"text": "c"}\r\n', encoding="utf-8")
    assert drain(FileSource(str(jsonl), format="jsonl").build_partition(str(jsonl), None, 10)) == [
        {"text": "a\u2028b"}, {"text": "c"}]
    text = tmp_path / "f.txt"
    text.write_text("page one\fpage two\nnext\r\n")
    assert drain(FileSource(str(text)).build_partition(str(text), None, 10)) == ["page one\fpage two", "next"]


@pytest.mark.parametrize("fmt", ["text", "jsonl", "csv"])
def test_batches_hold_at_most_batch_size_records_and_resume_from_any_of_them(tmp_path, fmt, monkeypatch):
    monkeypatch.setattr("raystream.connectors.files.source._CHUNK", 64)
    path = tmp_path / f"in.{fmt}"
    rows = [{"n": str(i)} for i in range(23)]
    body = {"text": "".join(f"{r['n']}\n" for r in rows), "jsonl": "".join(json.dumps(r) + "\n" for r in rows),
            "csv": "n\n" + "".join(f"{r['n']}\n" for r in rows)}[fmt]
    path.write_text(body)
    expected = {"text": [r["n"] for r in rows], "jsonl": rows, "csv": rows}[fmt]
    src = FileSource(str(path), format=fmt)
    part = src.build_partition(str(path), None, 4)
    seen, offsets = [], []
    while (batch := part.next_batch()) is not None:
        assert 1 <= len(batch) <= 4
        seen += batch
        offsets.append((len(seen), part.snapshot()))
    assert seen == expected
    for emitted, offset in offsets:  # a restore from any batch's offset continues exactly there
        assert seen[:emitted] + drain(src.build_partition(str(path), offset, 4)) == expected


def test_blank_lines_never_make_an_empty_batch(tmp_path):
    """An empty batch means "nothing ready yet" and makes the reader idle: blank lines are
    read past instead (a double-spaced file read one record at a time)."""
    path = tmp_path / "spaced.jsonl"
    path.write_text("".join(f'{{"n": {i}}}\n\n\n' for i in range(5)))
    part = FileSource(str(path), format="jsonl").build_partition(str(path), None, 1)
    batches = []
    while (batch := part.next_batch()) is not None:
        batches.append(batch)
    assert batches == [[{"n": i}] for i in range(5)]
