"""FileSource reads lines and rows in batches of at most `batch_size`, reports offsets, and
resumes from them exactly."""
import datetime as dt
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


def test_csv_rows_become_dicts_and_resume_skips_the_header(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,name\n" + "".join(f'{i},"n, {i}"\n' for i in range(50)))
    src = FileSource(str(path), format="csv")
    part = src.build_partition(str(path), None, 10)
    head = part.next_batch()
    rest = drain(src.build_partition(str(path), part.snapshot(), 10))
    assert head + rest == [{"id": i, "name": f"n, {i}"} for i in range(50)]


def test_csv_values_are_typed_as_arrow_infers_them_and_quoted_fields_hold_newlines(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('id,note,price,paid,at\n'
                    '1,"two\nlines",2.5,true,2026-01-01T00:00:00Z\n'
                    '2,"a ""quote""",,false,2026-01-01T00:00:01Z\n')
    rows = drain(FileSource(str(path), format="csv").build_partition(str(path), None, 10))
    utc = dt.timezone.utc
    assert rows == [
        {"id": 1, "note": "two\nlines", "price": 2.5, "paid": True, "at": dt.datetime(2026, 1, 1, tzinfo=utc)},
        {"id": 2, "note": 'a "quote"', "price": None, "paid": False, "at": dt.datetime(2026, 1, 1, 0, 0, 1, tzinfo=utc)}]


def test_csv_column_types_name_a_column_s_type(tmp_path):
    path = tmp_path / "z.csv"
    path.write_text("zip,n\n02134,1\n10001,2\n")
    src = FileSource(str(path), format="csv", column_types={"zip": "string", "n": pa.float64()})
    assert drain(src.build_partition(str(path), None, 10)) == [{"zip": "02134", "n": 1.0}, {"zip": "10001", "n": 2.0}]
    with pytest.raises(JobDefinitionError, match="not an Arrow type"):
        FileSource(str(path), format="csv", column_types={"zip": "text"})
    with pytest.raises(JobDefinitionError, match="column_types is for format='csv'"):
        FileSource(str(path), format="jsonl", column_types={"zip": "string"})


def test_a_csv_column_whose_values_change_kind_says_to_give_its_type(tmp_path):
    path = tmp_path / "late.csv"
    path.write_text("id,v\n" + "".join(f"{i},{i}\n" for i in range(200_000)) + "x,y\n")
    part = FileSource(str(path), format="csv").build_partition(str(path), None, 100_000)
    with pytest.raises(SourceError, match=r"late\.csv: column 'id'.*column_types=\{'id': 'string'\}"):
        drain(part)


def test_csv_wrong_field_count_names_the_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n3\n")
    with pytest.raises(SourceError, match=r"bad\.csv: malformed CSV row '3': 1 fields where the header has 2"):
        FileSource(str(path), format="csv").build_partition(str(path), None, 10).next_batch()


def test_an_empty_csv_file_has_no_header(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(SourceError, match=r"empty\.csv:1: CSV file has no header line"):
        FileSource(str(path), format="csv").build_partition(str(path), None, 10).next_batch()
    path.write_text("a,b\n")
    assert drain(FileSource(str(path), format="csv").build_partition(str(path), None, 10)) == []


def test_a_csv_offset_of_0_2_resumes_at_the_same_row(tmp_path):
    """0.2 saved (byte position, line number) after the last line emitted; blank lines
    were skipped, as Arrow skips them. The run goes on with strings, as 0.2 read them, so
    its records keep their kind."""
    path = tmp_path / "old.csv"
    path.write_text("n\n0\n1\n\n2\n3\n")
    position = len("n\n0\n1\n\n2\n")  # after rows 0, 1 and 2 (line 5)
    rest = drain(FileSource(str(path), format="csv").build_partition(str(path), [position, 5], 10))
    assert rest == [{"n": "3"}]


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
    expected = {"text": [r["n"] for r in rows], "jsonl": rows, "csv": [{"n": int(r["n"])} for r in rows]}[fmt]
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


# --- review of the Arrow CSV reader (each a defect found and fixed) -------------------------

def read_csv(path, offset=None, batch_size=10, **options):
    return drain(FileSource(str(path), format="csv", **options).build_partition(str(path), offset, batch_size))


def test_csv_values_keep_exactly_what_was_written_where_arrow_would_change_them(tmp_path):
    """Only an empty value is null (not NA, N/A, NaN, null), and integers past 64 bits
    stay exact strings, not lossy floats."""
    path = tmp_path / "v.csv"
    path.write_text("id,country,code,n\n18446744073709551615,NA,null,1\n1,N/A,nan,\n")
    assert read_csv(path) == [{"id": "18446744073709551615", "country": "NA", "code": "null", "n": 1},
                              {"id": "1", "country": "N/A", "code": "nan", "n": None}]


def test_a_header_only_csv_without_a_final_newline_has_no_rows(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("a,b")
    assert read_csv(path) == []


def test_a_csv_ending_inside_a_quoted_value_is_refused_before_its_last_batch_is_emitted(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('id,name\n0,x\n1,"abc\n2,y\n3,z\n')
    part = FileSource(str(path), format="csv").build_partition(str(path), None, 1)
    with pytest.raises(SourceError, match="ends inside a quoted value"):  # the file's one block: none of it
        part.next_batch()
    path.write_text('id,name\n1,"two\nlines"\n')  # closed: fine
    assert read_csv(path) == [{"id": 1, "name": "two\nlines"}]


def test_a_restored_csv_partition_keeps_the_types_of_its_first_run_if_the_file_grew(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("id,amount\n1,10\n2,20\n")
    src = FileSource(str(path), format="csv")
    part = src.build_partition(str(path), None, 1)
    assert part.next_batch() == [{"id": 1, "amount": 10}]
    offset = json.loads(json.dumps(part.snapshot()))  # at-most-once saves offsets as JSON
    part.close()
    with path.open("a") as f:
        f.write("3,n/a\n")
    # amount stays int64: "n/a" is refused, not read as a column of strings the first run never emitted
    with pytest.raises(SourceError, match=r"column 'amount'.*column_types=\{'amount': 'string'\}"):
        src.build_partition(str(path), offset, 1).next_batch()
    # column_types given on the restore wins: the way to go on past such a row
    assert read_csv(path, offset, column_types={"amount": "string"}) == [{"id": 2, "amount": "20"},
                                                                        {"id": 3, "amount": "n/a"}]


def test_a_closed_csv_partition_closes_its_file(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("a\n1\n")
    part = FileSource(str(path), format="csv").build_partition(str(path), None, 10)
    file = part._file
    part.close()
    assert file.closed
