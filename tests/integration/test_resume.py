"""Resuming a finished or stopped run after the job changed around it: new input files,
another source parallelism, another max_parallelism, damaged checkpoints."""
import collections
import os
from pathlib import Path

import pytest

import raystream as rs
from raystream.errors import JobFailedError
from raystream.sinks import FileSink, read_files
from raystream.sources import FileSource, SequenceSource
from tests.helpers.support import wait_until


def write_lines(path: Path, ids) -> None:
    path.write_text("".join(f"{i}\n" for i in ids))


def file_job(tmp_path, *, source_parallelism: int, audit: bool = False, guarantee="exactly_once") -> rs.Job:
    job = rs.Job("files", parallelism=1, checkpoint=rs.CheckpointConfig(interval=0.2), guarantee=guarantee,
                 audit=rs.Audit(source_id=int, sink_id=lambda r: r["id"]) if audit else None)
    (job.source("lines", FileSource(str(tmp_path / "in" / "*.txt")), parallelism=source_parallelism)
        .map("row", lambda line: {"id": int(line)})
        .sink("out", FileSink(str(tmp_path / "out"))))
    return job


def ids_committed(tmp_path) -> collections.Counter:
    return collections.Counter(r["id"] for r in read_files(str(tmp_path / "out")))


@pytest.mark.parametrize("resume_parallelism, guarantee", [(3, "exactly_once"), (3, "at_most_once")])
def test_resume_after_new_files_reads_each_line_once(tmp_path, resume_parallelism, guarantee):
    (tmp_path / "in").mkdir()
    for n, name in enumerate(["a", "b", "c"]):
        write_lines(tmp_path / "in" / f"{name}.txt", range(n * 10, n * 10 + 10))
    first = file_job(tmp_path, source_parallelism=2, audit=True, guarantee=guarantee).run()
    assert ids_committed(tmp_path) == collections.Counter(range(30))
    # a2.txt sorts between a.txt and b.txt, so every later partition moves to another subtask.
    write_lines(tmp_path / "in" / "a2.txt", range(100, 110))
    second = file_job(tmp_path, source_parallelism=resume_parallelism, audit=True,
                      guarantee=guarantee).run(resume=True)
    assert second.run_id == first.run_id
    assert ids_committed(tmp_path) == collections.Counter([*range(30), *range(100, 110)])  # new file once, old ones never again
    lines = rs.audit_checkpoints(second.checkpoint_root, second.run_id)
    assert lines and all(line.matches for line in lines), lines  # tallies are sums, also after a rescale
    assert lines[-1].source_records == 40


@pytest.mark.extended  # out of the default run, which must stay under 15 minutes on 2 cores
def test_a_partition_missing_for_a_run_keeps_its_offset_until_it_returns(tmp_path):
    """S3: a file moved away for a while (or an S3 listing that missed it) is not read
    again when it returns: its offset is carried in every checkpoint meanwhile."""
    (tmp_path / "in").mkdir()
    for n, name in enumerate(["a", "b", "c"]):
        write_lines(tmp_path / "in" / f"{name}.txt", range(n * 10, n * 10 + 10))
    file_job(tmp_path, source_parallelism=2).run()
    os.rename(tmp_path / "in" / "a.txt", tmp_path / "a.txt")
    write_lines(tmp_path / "in" / "d.txt", range(200, 205))
    file_job(tmp_path, source_parallelism=2).run(resume=True)
    assert ids_committed(tmp_path) == collections.Counter([*range(30), *range(200, 205)])
    os.rename(tmp_path / "a.txt", tmp_path / "in" / "a.txt")  # back, at a third parallelism
    file_job(tmp_path, source_parallelism=3).run(resume=True)
    assert ids_committed(tmp_path) == collections.Counter([*range(30), *range(200, 205)])


def keyed_job(tmp_path, *, max_parallelism=128, errors="fail", parallelism=2, n=3_000) -> rs.Job:
    job = rs.Job("keyed", parallelism=parallelism, checkpoint=rs.CheckpointConfig(interval=0.2, retain=2),
                 runtime=rs.RuntimeConfig(max_parallelism=max_parallelism), errors=errors)
    (job.source("nums", SequenceSource(n, partitions=2, rate=3_000))
        .key_by("by_mod", lambda x: x % 50)
        .reduce("sum", lambda a, b: a + b)
        .map("row", lambda kv: {"key": kv[0], "total": kv[1]})
        .sink("out", FileSink(str(tmp_path / "out"))))
    return job


def test_resume_with_another_max_parallelism_is_refused(tmp_path):
    keyed_job(tmp_path).run()
    with pytest.raises(JobFailedError, match="set max_parallelism=128"):
        keyed_job(tmp_path, max_parallelism=64).run(resume=True)


@pytest.mark.extended  # moved out of the default run to keep it under 15 minutes
def test_a_chain_writing_dead_letters_is_rescaled_like_any_other(tmp_path):
    """Dead-letter writers are per subtask like sinks; their state moves with the chain."""
    dead = FileSink(str(tmp_path / "dead"))
    keyed_job(tmp_path, errors=rs.ErrorPolicy.dead_letter(dead), n=3_000).run()
    keyed_job(tmp_path, errors=rs.ErrorPolicy.dead_letter(dead), parallelism=3, n=6_000).run(resume=True)
    totals: dict[int, int] = collections.defaultdict(int)
    for row in read_files(str(tmp_path / "out")):  # running totals: the largest is the final one
        totals[row["key"]] = max(totals[row["key"]], row["total"])
    expected: dict[int, int] = collections.defaultdict(int)
    for x in range(6_000):
        expected[x % 50] += x
    assert totals == expected


@pytest.mark.extended  # 13 s: the default suite's budget is 15 minutes
def test_resume_refuses_when_no_checkpoint_verifies_and_retracts_nothing(tmp_path):
    result = keyed_job(tmp_path).run()
    committed = sorted(p.name for p in (tmp_path / "out").iterdir())
    run_dir = Path(result.checkpoint_root) / result.run_id
    kept = sorted(p.stem for p in (run_dir / "manifests").glob("*.json"))
    assert len(kept) == 2
    for snap in (run_dir / "snapshots").rglob("*.snap"):  # every retained checkpoint is damaged
        data = bytearray(snap.read_bytes())
        data[len(data) // 2] ^= 1
        snap.write_bytes(bytes(data))
    refused = sorted(int(k) for k in kept)
    for _ in range(2):  # the second time, the refusals are known from storage
        with pytest.raises(JobFailedError, match=rf"can be restored \(refused: \[{refused[0]}, {refused[1]}\]\)"):
            keyed_job(tmp_path).run(resume=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == committed  # nothing retracted
    assert sorted(int(p.stem) for p in (run_dir / "refused").iterdir()) == refused


@pytest.mark.parametrize("incremental", [False, True])
def test_a_long_run_leaves_a_bounded_checkpoint_tree(tmp_path, incremental):
    job = rs.Job("tree", parallelism=2, checkpoint=rs.CheckpointConfig(interval=0.05, retain=3,
                                                                       incremental=incremental, base_every=3))
    (job.source("nums", SequenceSource(None, partitions=2, rate=4_000))
        .key_by("k", lambda x: x % 10).reduce("sum", lambda a, b: a + b)
        .sink("out", FileSink(str(tmp_path / "out"))))
    handle = job.start()
    try:  # as many checkpoints as it takes, however loaded the machine (a fixed run saw 7 once)
        wait_until(lambda: handle.status().checkpoints.completed >= 12, "12 checkpoints, far more than retained")
    finally:
        handle.stop()
    result = handle.wait()
    assert result.checkpoints.completed >= 12
    run_dir = Path(result.checkpoint_root) / result.run_id
    snapshot_dirs = list((run_dir / "snapshots").iterdir())
    # retained, maybe one in flight; incremental snapshots also keep the chain the oldest
    # retained one builds on: a base and up to base_every changelogs
    assert len(snapshot_dirs) <= 3 + 1 + (3 + 1 if incremental else 0), sorted(p.name for p in snapshot_dirs)
    assert len(list((run_dir / "manifests").iterdir())) == 3
