"""Sinks write whole files that readers of the directory can see."""
import pyarrow as pa
import pytest

from raystream.errors import JobDefinitionError, SinkError
from raystream.sinks import CollectSink, FileSink, SinkContext, read_files


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_file_sink_writes_parts_readers_see(tmp_path, fmt):
    sink = FileSink(str(tmp_path), format=fmt, rows_per_file=3)
    w = sink.build_writer(SinkContext("out", 0, 1))
    w.write_batch([{"a": 1}, {"a": 2}])
    w.write_batch(pa.RecordBatch.from_pylist([{"a": 3}, {"a": 4}]))
    w.write_batch([{"a": 5}])
    assert w.close() == {"files": 2}
    (tmp_path / "_staging").write_text("not output")
    (tmp_path / ".hidden").write_text("not output")
    assert sorted(r["a"] for r in read_files(str(tmp_path), format=fmt)) == [1, 2, 3, 4, 5]


def test_two_runs_into_one_directory_never_overwrite(tmp_path):
    for run in range(2):
        w = FileSink(str(tmp_path)).build_writer(SinkContext("out", 0, 1))
        w.write_batch([run])
        w.close()
    assert sorted(read_files(str(tmp_path))) == [0, 1]


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
