"""Word count over the text files in jobs/data/: the hello world of stream processing.

    raystream run jobs/wordcount.py
"""
import operator
import re
from pathlib import Path

import raystream as rs

DATA = Path(__file__).parent / "data" / "*.txt"
WORD = re.compile(r"[a-z']+")

job = rs.Job("wordcount", parallelism=2)
(
    job.source("lines", rs.sources.FileSource(str(DATA)))
    .flat_map("words", lambda line: WORD.findall(line.lower()))
    .key_by("by_word", lambda word: word, value=lambda word: 1)
    .reduce("count", operator.add)
    .sink("counts", rs.sinks.CollectSink(keep="last"))
)


def report(result: rs.JobResult) -> None:
    counts = sorted(result.outputs["counts"], key=lambda kv: (-kv[1], kv[0]))
    print(f"{sum(n for _, n in counts)} words, {len(counts)} distinct; the top 10:")
    for word, n in counts[:10]:
        print(f"{n:6d}  {word}")


if __name__ == "__main__":  # python this_file.py [options]: as `raystream run this_file.py [options]`
    from raystream.cli import run_file

    run_file(__file__)
