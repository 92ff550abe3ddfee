"""Jobs on a real local Ray produce what the same computation gives in plain Python."""
import collections
import operator
import random
from pathlib import Path

import pytest

import raystream as rs
from raystream.sinks import CollectSink
from raystream.sources import FileSource, SequenceSource

TEXT_DIR = Path(__file__).resolve().parents[2] / "jobs" / "data"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The shipped text plus generated files, so there are several partitions."""
    d = tmp_path_factory.mktemp("corpus")
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(500)] + ["the", "of", "and"]
    for f in range(4):
        lines = [" ".join(rng.choices(vocab, k=rng.randint(0, 12))) for _ in range(3000)]
        (d / f"gen{f}.txt").write_text("\n".join(lines) + "\n")
    for p in TEXT_DIR.glob("*.txt"):
        (d / p.name).write_text(p.read_text())
    return d


def expected_counts(directory: Path) -> collections.Counter:
    return collections.Counter(w for p in sorted(directory.glob("*.txt")) for w in p.read_text().split())


@pytest.mark.parametrize("parallelism, chaining, emit", [
    (1, True, "every"),
    (2, True, "last"),  # the mini-batch reduce
    pytest.param(3, True, "every", marks=pytest.mark.extended),
    pytest.param(3, False, "every", marks=pytest.mark.extended),  # 15 actors: slow to start on 2 cores
])
def test_word_count_equals_counter(corpus, parallelism, chaining, emit):
    result, updates = word_count(corpus, rs.Job(f"wc-{emit}", parallelism=parallelism,
                                                runtime=rs.RuntimeConfig(chaining=chaining, batch_size=512)), emit)
    expected = expected_counts(corpus)
    per_key = updates_per_key(updates).values()
    if emit == "every":  # a running reduce emits one update per word, and per key they count up 1, 2, 3, ...
        assert len(updates) == sum(expected.values()) == result.records_out("count")
        assert all(ns == list(range(1, len(ns) + 1)) for ns in per_key)
    else:  # the mini-batch reduce: fewer updates than words, and per key they only go up
        assert len(expected) <= len(updates) == result.records_out("count") < sum(expected.values())
        assert all(ns == sorted(set(ns)) for ns in per_key)
    assert result.state == "finished"


def word_count(corpus, job: rs.Job, emit: str = "every") -> tuple[rs.JobResult, list]:
    """Run the word count on `job`; its final counts must equal Counter's. Returns the
    result and every update the reduce emitted."""
    counts = (job.source("lines", FileSource(str(corpus / "*.txt")))
              .flat_map("split", str.split)
              .key_by("by_word", lambda w: w, value=lambda w: 1)
              .reduce("count", operator.add, emit=emit))
    counts.sink("final", CollectSink(keep="last"))
    counts.sink("updates", CollectSink())
    result = job.run()
    assert dict(result.outputs["final"]) == expected_counts(corpus)
    return result, result.outputs["updates"]


def updates_per_key(updates: list) -> dict:
    per_key = collections.defaultdict(list)
    for word, n in updates:
        per_key[word].append(n)
    return per_key


def test_the_columnar_word_count_job_equals_the_per_record_one(corpus):
    import re
    import runpy

    ns = runpy.run_path(str(TEXT_DIR.parent / "wordcount_arrow.py"), run_name="__raystream_job__")
    word = re.compile(r"[a-z']+")  # jobs/wordcount.py's words
    expected = collections.Counter(w for p in sorted(corpus.glob("*.txt")) for line in p.read_text().splitlines()
                                   for w in word.findall(line.lower()))
    job = ns["build"](str(corpus / "*.txt"), CollectSink())
    result = job.with_options(runtime=rs.RuntimeConfig(batch_size=512)).run()
    assert ns["totals"](result.outputs["counts"]) == expected
    # one row per distinct word of each batch, not one per word
    assert len(expected) <= result.records_out("count") < sum(expected.values())


def test_union_of_two_sources(corpus):
    job = rs.Job("union", parallelism=2)
    evens = job.source("evens", SequenceSource(2000, partitions=2)).map("double", lambda x: 2 * x)
    odds = job.source("odds", SequenceSource(1000, partitions=3)).map("odd", lambda x: 2 * x + 1)
    evens.union(odds).filter("all", lambda x: True).sink("out", CollectSink())
    out = job.run().outputs["out"]
    assert sorted(out) == sorted([2 * x for x in range(2000)] + [2 * x + 1 for x in range(1000)])


def test_stateful_map_and_rebalance_at_other_parallelism():
    def running_mean(state, value):
        n, total = state or (0, 0)
        n, total = n + 1, total + value
        return (n, total), total / n

    job = rs.Job("means", parallelism=2)
    (job.source("nums", SequenceSource(3000, partitions=2))
        .map("widen", lambda x: x, parallelism=3)
        .key_by("mod", lambda x: x % 7)
        .stateful_map("mean", running_mean, parallelism=2)
        .sink("out", CollectSink(keep="last")))
    final = dict(job.run().outputs["out"])
    assert final == {k: sum(range(k, 3000, 7)) / len(range(k, 3000, 7)) for k in range(7)}


def test_map_batches_with_python_steps_around_it():
    import pyarrow.compute as pc

    job = rs.Job("vec", parallelism=2)
    (job.source("nums", SequenceSource(10_000, partitions=2))
        .map("as_dict", lambda x: {"x": x})
        .map_batches("square", lambda b: b.append_column("y", pc.multiply(b.column("x"), b.column("x"))))
        .map("pair", lambda r: (r["x"], r["y"]))
        .sink("out", CollectSink()))
    assert sorted(job.run().outputs["out"]) == [(x, x * x) for x in range(10_000)]


def test_start_status_and_stop_of_an_unbounded_job():
    import time

    job = rs.Job("forever", parallelism=2)
    job.source("nums", SequenceSource(None, partitions=2, rate=20_000)).map("id", lambda x: x).sink(
        "out", CollectSink())
    handle = job.start()
    deadline = time.monotonic() + 30
    while (status := handle.status()).steps["out"].records_in < 1000:
        assert time.monotonic() < deadline, f"no progress: {status}"
    assert status.state == "running" and status.subtasks == 2
    handle.stop()
    result = handle.wait()
    assert result.state == "stopped"
    out = result.outputs["out"]
    assert len(out) == len(set(out)) == result.records_out("nums")
    assert sorted(out) == sorted(set(out))
