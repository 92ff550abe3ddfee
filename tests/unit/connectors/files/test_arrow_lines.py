"""FileSource(columnar=True) reads text as Arrow batches of a "line" column: the same lines
and the same offsets as the per-line reader, whatever the file's line endings, blank lines,
long lines or missing last LF, and a savepoint of either reader resumes with the other."""
import pickle
from unittest import mock

import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from raystream.errors import JobDefinitionError, SourceError
from raystream.sources import FileSource

LINE = st.text(alphabet=st.sampled_from("ab é\r\t"), max_size=40)


def read_all(partition) -> tuple[list[str], list[tuple[int, int]]]:
    """Every line the partition emits, and its offset after each batch."""
    lines, offsets = [], []
    while (batch := partition.next_batch()) is not None:
        lines += batch.column(0).to_pylist() if isinstance(batch, pa.RecordBatch) else batch
        offsets.append(partition.snapshot())
    partition.close()
    return lines, offsets


def text_file(tmp_path, lines: list[str], last_lf: bool) -> str:
    path = tmp_path / "f.txt"
    path.write_bytes(("\n".join(lines) + ("\n" if last_lf else "")).encode())
    return str(path)


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(LINE, min_size=1, max_size=60), last_lf=st.booleans(), batch=st.integers(1, 9),
       chunk=st.sampled_from([3, 17, 1 << 20]), max_bytes=st.sampled_from([1, 7, 64 << 20]),
       resume_at=st.integers(0, 60))
def test_the_same_lines_and_offsets_as_the_per_line_reader(tmp_path_factory, lines, last_lf, batch, chunk, max_bytes,
                                                           resume_at):
    with (mock.patch("raystream.connectors.files.source._CHUNK", chunk),
          mock.patch("raystream.connectors.files.arrow_lines._CHUNK", chunk),
          mock.patch("raystream.connectors.files.arrow_lines.MAX_BATCH_BYTES", max_bytes)):
        same_as_per_line(tmp_path_factory, lines, last_lf, batch, resume_at)


def same_as_per_line(tmp_path_factory, lines, last_lf, batch, resume_at):
    uri = text_file(tmp_path_factory.mktemp("t"), lines, last_lf)
    per_line, arrow = FileSource(uri), FileSource(uri, columnar=True)
    assert arrow.columnar and not per_line.columnar
    expected, expected_offsets = read_all(per_line.build_partition(uri, None, batch))
    got, offsets = read_all(arrow.build_partition(uri, None, batch))
    assert got == expected
    if not expected:  # an empty file
        assert offsets == expected_offsets == []
        return
    # batches may be cut elsewhere (the Arrow reader fills each), but every offset is
    # (the bytes of the first n lines with their LFs, n), as the per-line reader's are
    data = open(uri, "rb").read()
    ends = [i + 1 for i, b in enumerate(data) if b == 10] + ([] if data.endswith(b"\n") else [len(data)])
    assert all(pos == ends[n - 1] for pos, n in offsets + expected_offsets)
    assert offsets[-1] == expected_offsets[-1] == (len(data), len(expected))
    # resumed from any offset of either reader, by either reader, the rest of the file follows
    for cut in (offsets[min(resume_at, len(offsets) - 1)], expected_offsets[min(resume_at, len(expected_offsets) - 1)]):
        assert read_all(arrow.build_partition(uri, cut, batch))[0] == expected[cut[1]:]
        assert read_all(per_line.build_partition(uri, cut, batch))[0] == expected[cut[1]:]


def test_batches_are_a_string_column_named_line(tmp_path):
    uri = text_file(tmp_path, [f"line {i}" for i in range(10)], last_lf=True)
    batch = FileSource(uri, columnar=True).build_partition(uri, None, 4).next_batch()
    assert batch.schema == pa.schema([("line", pa.string())]) and batch.num_rows == 4


def test_a_batch_carries_its_own_bytes_only(tmp_path):
    """A batch crosses to the next process pickled: a slice of the chunk it was split from
    would carry the whole chunk's buffers."""
    uri = text_file(tmp_path, [f"the quick brown fox {i}" for i in range(100_000)], last_lf=True)
    part = FileSource(uri, columnar=True).build_partition(uri, None, 1024)
    for _ in range(3):
        batch = part.next_batch()
        assert len(pickle.dumps(batch, protocol=5)) < 2 * batch.nbytes + 1024


def test_long_lines_make_smaller_batches(tmp_path):
    """One string column holds at most 2 GiB: a batch ends at about MAX_BATCH_BYTES (16 MiB)."""
    uri = text_file(tmp_path, ["x" * 1000] * 50, last_lf=False)
    with mock.patch("raystream.connectors.files.arrow_lines.MAX_BATCH_BYTES", 10_000):
        part = FileSource(uri, columnar=True).build_partition(uri, None, 65_536)
        sizes = [b.num_rows for b in iter(part.next_batch, None)]
    assert sizes == [10] * 5 and part.snapshot() == (50 * 1001 - 1, 50)


def test_a_line_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nalso fine\nnot \xff fine\n")
    with pytest.raises(SourceError, match=r"bad.txt:3: not valid UTF-8"):
        read_all(FileSource(str(path), columnar=True).build_partition(str(path), None, 10))


def test_columnar_is_for_text_and_parquet(tmp_path):
    with pytest.raises(JobDefinitionError, match="columnar=True reads format='text'"):
        FileSource(str(tmp_path / "*.csv"), format="csv", columnar=True)
    assert FileSource(str(tmp_path / "*.parquet"), format="parquet").columnar
