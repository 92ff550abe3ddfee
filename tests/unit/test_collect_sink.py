"""CollectSink(keep="last") keeps the latest value per key of (key, value) records, and
refuses anything else rather than reading it as a pair."""
from __future__ import annotations

import pyarrow as pa
import pytest

from raystream.errors import SinkError
from raystream.sinks import CollectSink, SinkContext


def latest_writer():
    return CollectSink(keep="last").build_writer(SinkContext("out", 0, 1))


def test_the_latest_value_per_key_is_kept():
    writer = latest_writer()
    writer.write_batch([("a", 1), ("b", 2)])
    writer.write_batch([("a", 3)])
    assert writer.close() == [("a", 3), ("b", 2)]


def test_arrow_rows_of_two_columns_are_refused_not_read_as_pairs():
    # dict.update([{"category": 10, "average": 5.0}]) would keep {"category": "average"}
    writer = latest_writer()
    rows = pa.RecordBatch.from_pylist([{"category": 10, "average": 5.0}])
    with pytest.raises(SinkError, match="keep='all'"):
        writer.write_batch(rows)
    assert writer.close() == []


@pytest.mark.parametrize("record", ["ab", {"k": 1, "v": 2}, ("a", 1, 2), 7])
def test_a_record_that_is_not_a_pair_is_refused(record):
    writer = latest_writer()
    with pytest.raises(SinkError, match=r"takes \(key, value\) records"):
        writer.write_batch([("a", 1), record])
    assert writer.close() == []  # nothing of the refused batch is kept
