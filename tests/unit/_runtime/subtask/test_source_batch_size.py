"""A source of Arrow batches reads RuntimeConfig.arrow_batch_size rows at a time; any other
source batch_size records."""
import raystream as rs
from raystream._runtime.subtask.source_reader import SourceReader, source_batch_size
from raystream.connectors import nexmark as nx
from raystream.graph import Step, StepKind


def source_step(source: rs.sources.Source) -> Step:
    return Step("s", StepKind.SOURCE, (), source=source)


def test_columnar_sources_read_arrow_batch_size_rows_and_others_batch_size_records():
    runtime = rs.RuntimeConfig(batch_size=100, arrow_batch_size=3_000)
    config = nx.NexmarkConfig(events=10_000, partitions=1)
    columnar, records = source_step(nx.NexmarkSource(config, columnar=True)), source_step(nx.NexmarkSource(config))
    assert source_batch_size(columnar, runtime) == 3_000 and source_batch_size(records, runtime) == 100
    assert source_batch_size(source_step(rs.sources.FileSource("x.parquet", format="parquet")), runtime) == 3_000
    assert source_batch_size(source_step(rs.sources.FileSource("x.csv", format="csv")), runtime) == 100
    reader = SourceReader(columnar, ["0"], source_batch_size(columnar, runtime))
    reader.open({})
    assert reader.parts["0"].next_batch().num_rows == 3_000
    assert rs.RuntimeConfig().arrow_batch_size == 65_536
