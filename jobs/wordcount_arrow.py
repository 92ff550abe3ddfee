"""Word count over Arrow: jobs/wordcount.py with columnar steps. The files are read as
Arrow batches of lines (`FileSource(..., columnar=True)`), each batch is split and counted
in Arrow (`map_batches`), the counts are routed by the `word` column,
and `aggregate` keeps each word's running total in numpy columns: Python looks up each
distinct word of a batch in a dict, and runs nothing per word.

    raystream run jobs/wordcount_arrow.py
"""
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

import raystream as rs
from raystream import aggregates as agg

DATA = Path(__file__).parent / "data" / "*.txt"


def count_words(lines: pa.RecordBatch) -> pa.RecordBatch:
    """The words of a batch of lines (lower case, runs of a-z and '), each with its count:
    the words jobs/wordcount.py finds with `[a-z']+`."""
    words = pc.list_flatten(pc.split_pattern_regex(pc.utf8_lower(lines.column(0)), r"[^a-z']+"))
    counts = pc.value_counts(words.filter(pc.not_equal(words, "")))
    return pa.RecordBatch.from_arrays([counts.field(0), counts.field(1)], names=["word", "n"])


def build(paths: str, sink: rs.sinks.Sink) -> rs.Job:
    job = rs.Job("wordcount_arrow", parallelism=2)
    (
        job.source("lines", rs.sources.FileSource(paths, columnar=True))
        .map_batches("words", count_words)
        .key_by("by_word", "word")
        .aggregate("count", n=agg.sum("n"))               # one row per word of each batch: its total
        .sink("counts", sink)
    )
    return job


job = build(str(DATA), rs.sinks.CollectSink())


def totals(rows: list[dict]) -> dict[str, int]:
    """Each word's final count: the largest (so the last) total the aggregate emitted for it."""
    out: dict[str, int] = {}
    for row in rows:
        out[row["word"]] = max(out.get(row["word"], 0), row["n"])
    return out


def report(result: rs.JobResult) -> None:
    counts = sorted(totals(result.outputs["counts"]).items(), key=lambda kv: (-kv[1], kv[0]))
    print(f"{sum(n for _, n in counts)} words, {len(counts)} distinct; the top 10:")
    for word, n in counts[:10]:
        print(f"{n:6d}  {word}")


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
