"""The mini-batch reduce with `combine=True` under SIGKILL: the key_by subtasks fold each
batch's counts per word before the shuffle, the reduce subtasks add the folded counts.
Committed output must hold, per word, updates that only go up (a replayed batch committed
twice would repeat or overshoot one) and end at the word's count in the input."""
from __future__ import annotations

import collections
import operator

import pytest

import raystream as rs
from tests.helpers.support import wait_until

from .harness import kill, running

EVENTS = 30_000
PARTITIONS = 4
WORDS = 3  # a partition's records cycle through them: a batch of 4 or more folds


def word(i: int) -> str:
    return f"w{(i // PARTITIONS) % WORDS}"


def counting_job(out: str) -> rs.Job:
    job = rs.Job("combine_kills", parallelism=2, checkpoint=rs.CheckpointConfig(interval=0.3),
                 runtime=rs.RuntimeConfig(batch_size=256))
    (job.source("numbers", rs.sources.SequenceSource(EVENTS, partitions=PARTITIONS, rate=6_000))
     .map("word", word)
     .key_by("by_word", lambda w: w, value=lambda w: 1)
     .reduce("count", operator.add, emit="last", combine=True)
     .map("row", lambda kv: {"word": kv[0], "n": kv[1]})
     .sink("out", rs.sinks.FileSink(out, roll="checkpoint")))
    return job


@pytest.mark.extended  # 20 s each; unit tests hold the fold (tests/unit/_runtime/operators/test_reduce_emit.py)
@pytest.mark.parametrize("victim", ["numbers", "count"])
def test_counts_folded_before_the_shuffle_are_exactly_once_after_a_kill(victim, tmp_path):
    out = str(tmp_path / "out")
    handle = counting_job(out).start()
    status = wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
    assert handle.status().steps["by_word"].records_in < EVENTS // 2, "the job ran past the kill point"
    kill(status.pids[next(name for name in sorted(status.pids) if name.startswith(victim))])
    result = handle.wait()
    assert result.state == "finished" and result.restarts >= 1
    expected = collections.Counter(word(i) for i in range(EVENTS))
    updates = collections.defaultdict(list)
    for row in rs.sinks.read_files(out):
        updates[row["word"]].append(row["n"])
    assert {w: max(ns) for w, ns in updates.items()} == expected
    repeated = {w: ns for w, ns in updates.items() if len(set(ns)) != len(ns)}
    assert not repeated, f"updates committed twice: {dict(list(repeated.items())[:3])}"
    # folded: fewer records crossed to the reduce than words were keyed (one per word and
    # batch; how many fewer depends on the batches the paced source makes, small on an idle
    # machine, bigger under load and when it catches up after the restore)
    assert result.records_in("count") < result.records_in("by_word"), result
