"""Bad records under an error policy: skipped and counted, or dead-lettered in the same
checkpoints as the main output, so that output plus dead letters hold every input
record exactly once, even across a crash."""
import collections

import raystream as rs
from raystream.sinks import CollectSink, FileSink, read_files
from raystream.sources import SequenceSource
from tests.helpers.support import wait_until

from .harness import kill, running

N = 12_000


def parse(i: int) -> dict:
    if i % 97 == 0:
        raise ValueError(f"event {i} is malformed")
    return {"id": i, "customer": i % 11}


def total(t, e):
    if e["id"] % 89 == 0:
        raise KeyError("no tariff for this event")
    return (t or 0) + e["id"], {**e, "total": (t or 0) + e["id"]}


def poisoned_job(errors, out) -> rs.Job:
    job = rs.Job("poison", parallelism=2, errors=errors, checkpoint=rs.CheckpointConfig(interval=0.3))
    (job.source("ids", SequenceSource(N, partitions=2, rate=4_000))
        .map("parse", parse)
        .key_by("by_customer", lambda e: e["customer"])
        .stateful_map("total", total)
        .map("row", lambda kv: kv[1])
        .sink("out", out))
    return job


def test_skip_drops_and_counts_bad_records():
    result = poisoned_job("skip", CollectSink()).run()
    bad_parse = {i for i in range(N) if i % 97 == 0}
    bad_total = {i for i in range(N) if i % 89 == 0} - bad_parse
    assert sorted(r["id"] for r in result.outputs["out"]) == sorted(set(range(N)) - bad_parse - bad_total)
    assert (result.steps["parse"].errors, result.steps["total"].errors) == (len(bad_parse), len(bad_total)), result


def test_dead_letters_are_committed_with_the_output_exactly_once_across_a_kill(tmp_path):
    errors = rs.ErrorPolicy.dead_letter(FileSink(str(tmp_path / "dead")))
    handle = poisoned_job(errors, FileSink(str(tmp_path / "out"))).start()
    status = wait_until(lambda: running(handle, checkpoints=2), "two checkpoints")
    kill(status.pids[sorted(status.pids)[-1]])
    result = handle.wait()
    assert result.restarts == 1
    out = read_files(str(tmp_path / "out"))
    dead = read_files(str(tmp_path / "dead"))
    ids = collections.Counter([r["id"] for r in out] + [_id_of(d) for d in dead])
    assert sorted(ids) == list(range(N)) and set(ids.values()) == {1}
    by_step = collections.Counter(d["step_id"] for d in dead)
    assert by_step == {"parse": sum(1 for i in range(N) if i % 97 == 0),
                       "total": sum(1 for i in range(N) if i % 89 == 0 and i % 97)}
    parse_dead = next(d for d in dead if d["step_id"] == "parse")
    assert parse_dead["error"].startswith("ValueError: event") and parse_dead["source"]["partition"] in ("0", "1")
    assert isinstance(parse_dead["source"]["offset"], int)


def _id_of(dead: dict) -> int:
    record = dead["record"]
    return record if isinstance(record, int) else record[1]["id"]  # parse got an int; total a (key, event)
