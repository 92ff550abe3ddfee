"""Savepoints, starting from a checkpoint, and rescaling a running job: state belongs to
step ids, so a new run restores it into another parallelism or chaining, exactly once."""
import collections
import operator
import os
import shutil
import signal
import subprocess
import sys
import threading

from pathlib import Path

import pytest

import raystream as rs
from raystream.errors import ConfigError, RestoreError
from raystream.sinks import CollectSink, FileSink, read_files
from raystream.sources import SequenceSource
from tests.helpers.support import wait_until


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raystream.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "300"}, timeout=120)

PARTITIONS, KEYS = 4, 13


def counting_job(tmp_path, *, parallelism=2, chaining=True, sum_id="sum", extra_step=False, rate=3000.0,
                 interval=0.3, faults=()) -> rs.Job:
    """Numbers from an unbounded source: every id to a FileSink, and a keyed running sum."""
    job = rs.Job("counting", parallelism=parallelism, checkpoint=rs.CheckpointConfig(interval=interval),
                 runtime=rs.RuntimeConfig(chaining=chaining, linger=0.01, faults=faults))
    numbers = job.source("numbers", SequenceSource(None, partitions=PARTITIONS, rate=rate))
    rows = numbers.map("row", lambda i: {"id": i})
    if extra_step:
        rows = rows.filter("keep_all", lambda row: True)
    rows.sink("ids", FileSink(str(tmp_path / "ids"), roll_interval=0.5))  # visible mid-run, across savepoints
    (numbers.key_by("key", lambda i: i % KEYS).reduce(sum_id, operator.add)
        .sink("sums", CollectSink(keep="last")))
    return job


def committed_ids(tmp_path) -> list[int]:
    return [r["id"] for r in read_files(str(tmp_path / "ids"))]


def check_exactly_once(ids: list[int], sums: list[tuple[int, int]]) -> None:
    """Every id once, each partition a gap-free prefix, and the keyed sums of exactly those ids."""
    counts = collections.Counter(ids)
    assert not [i for i, n in counts.items() if n > 1], "duplicates"
    for p in range(PARTITIONS):
        mine = sorted(i for i in counts if i % PARTITIONS == p)
        assert mine == list(range(p, p + PARTITIONS * len(mine), PARTITIONS)), f"partition {p} has gaps"
    expected = collections.Counter()
    for i in counts:
        expected[i % KEYS] += i
    assert dict(sums) == {k: v for k, v in expected.items()}


def output_grows(tmp_path, beyond: int) -> int:
    return wait_until(lambda: (n := len(committed_ids(tmp_path))) > beyond and n, "committed output to grow",
                      timeout=60)


@pytest.mark.extended  # the default run keeps the 15-minute budget; rescaling is also in test_resume
def test_rescale_a_running_job_2_to_4_to_1_exactly_once(tmp_path):
    handle = counting_job(tmp_path).start()
    seen = output_grows(tmp_path, 500)
    up = handle.rescale(4)
    assert (up.from_parallelism, up.to_parallelism) == (2, 4) and up.pause > 0 and up.savepoint.endswith(".json")
    # four chains (numbers, row+ids, key, sum+sums), each now at parallelism 4
    assert handle.status().subtasks == 16
    seen = output_grows(tmp_path, seen + 500)
    down = handle.rescale(1)
    assert (down.from_parallelism, down.to_parallelism) == (4, 1) and down.run_id != up.run_id
    output_grows(tmp_path, seen + 500)
    handle.stop()
    result = handle.wait()
    ids = committed_ids(tmp_path)
    check_exactly_once(ids, result.outputs["sums"])
    assert result.records_out("numbers") == len(ids)  # counters continue across the runs


def test_from_a_savepoint_into_other_chaining_parallelism_and_an_added_step_through_a_crash(tmp_path):
    first = counting_job(tmp_path).start()
    output_grows(tmp_path, 300)
    savepoint = first.stop(savepoint=True)
    assert savepoint == first.wait().savepoint
    committed_before = len(committed_ids(tmp_path))
    # No periodic checkpoint in the new run: a crash must restore the savepoint, its origin
    changed = counting_job(tmp_path, parallelism=1, chaining=False, extra_step=True, interval=120.0)
    handle = changed.start(from_checkpoint=savepoint)
    status = wait_until(lambda: (s := handle.status()).state == "running" and
                        s.steps["numbers"].records_out > 2 * committed_before and s, "the new run reading")
    victim = sorted(name for name in status.pids if name.startswith("sum"))[0]
    os.kill(status.pids[victim], signal.SIGKILL)
    wait_until(lambda: handle.status().restarts == 1 and handle.status().state == "running", "the recovery")
    assert handle.status().checkpoints.last_id == int(Path(savepoint).stem)  # none of its own yet
    handle.stop()
    result = handle.wait()
    check_exactly_once(committed_ids(tmp_path), result.outputs["sums"])
    assert result.run_id != first.run_id and result.restarts == 1
    assert [r.failed for r in result.recoveries] == [f"subtask {victim}"]


@pytest.mark.extended  # out of the default run, which must stay under 15 minutes on 2 cores
def test_a_stop_with_a_savepoint_survives_the_coordinator_dying_while_it_stops(tmp_path):
    """The coordinator exits (os._exit) as the stop reaches it, before it tells the sources;
    the new coordinator must stop the job too, or the unbounded job runs on and
    stop(savepoint=True) never returns."""
    handle = counting_job(tmp_path, faults=(rs.faults.CrashAt("stopping", checkpoint=1),)).start()
    output_grows(tmp_path, 300)
    stopped: list[str] = []
    stopper = threading.Thread(target=lambda: stopped.append(handle.stop(savepoint=True)), daemon=True)
    stopper.start()
    try:
        wait_until(lambda: stopped, "stop(savepoint=True) to return", timeout=60)
    finally:
        if not stopped:  # leave no job running
            handle.stop()
    result = handle.wait()
    assert result.savepoint == stopped[0] and result.state == "stopped"
    check_exactly_once(committed_ids(tmp_path), result.outputs["sums"])


@pytest.mark.extended  # out of the default run, which must stay under 15 minutes on 2 cores
def test_state_of_a_missing_step_is_refused_before_anything_starts_unless_allowed(tmp_path):
    handle = counting_job(tmp_path, rate=500.0).start()
    wait_until(lambda: handle.status().checkpoints.completed >= 1, "a checkpoint")
    with pytest.raises(ConfigError, match="above max_parallelism 128"):
        handle.rescale(129)  # refused before the job is touched
    savepoint = handle.stop(savepoint=True)
    state = rs.checkpoints.read_state(savepoint, "sum").to_pylist()  # the state the sums were committed from
    expected = collections.Counter()
    for i in committed_ids(tmp_path):
        expected[i % KEYS] += i
    assert {row["key"]: row["value"] for row in state} == dict(expected)
    root = handle.wait().checkpoint_root
    listed = cli("checkpoints", "ls", root)
    assert listed.returncode == 0 and "final" in listed.stdout and savepoint in listed.stdout.replace("\n", "")
    shown = cli("checkpoints", "inspect", savepoint, "--step", "sum")
    assert shown.returncode == 0 and f"sum: {KEYS} keys" in shown.stdout
    renamed = counting_job(tmp_path, sum_id="total")
    with pytest.raises(RestoreError, match="has state for steps sum that this job does not have"):
        renamed.start(from_checkpoint=savepoint)
    with pytest.raises(RestoreError, match="no checkpoint at .*nothing is stored there"):
        renamed.start(from_checkpoint=str(tmp_path / "no-such-savepoint"))
    allowed = renamed.start(from_checkpoint=savepoint, allow_non_restored_state=True)
    wait_until(lambda: allowed.status().state == "running", "the run without the dropped state")
    allowed.stop()
    result = allowed.wait()
    ids = committed_ids(tmp_path)
    assert not [i for i, n in collections.Counter(ids).items() if n > 1]  # ids continue; the sums start over
    assert result.records_out("numbers") == len(ids)


def test_a_checkpoint_of_raystream_0_1_0_resumes_with_its_state(tmp_path, monkeypatch):
    """The checkpoint under tests/data/checkpoint-0.1.0 was written before the package was
    arranged in folders (its pickles name the old modules): a new run continues from it,
    and every keyed sum is that of all the numbers, each counted once."""
    from tests.unit._runtime.state.test_moved import EARLIER, EARLIER_KEY, KEYS, expected_sums

    monkeypatch.setenv("RAYSTREAM_CHECKPOINT_KEY", EARLIER_KEY)
    job = rs.Job("earlier", parallelism=2, checkpoint=rs.CheckpointConfig(storage=str(tmp_path)),
                 runtime=rs.RuntimeConfig(linger=0.01))
    numbers = job.source("numbers", SequenceSource(840, partitions=2),
                         event_time=rs.EventTime(lambda i: i * 10, max_delay=0))
    keyed = numbers.key_by("key", lambda i: i % KEYS)
    keyed.reduce("sum", operator.add).sink("sums", CollectSink(keep="last"))
    keyed.process("timers", lambda ctx, value: None).sink("counted", CollectSink())
    # its restored state is make.py's `Seen`, a class pickled by value that uses raystream.nexmark
    keyed.stateful_map("seen", lambda state, value: (state.add(value), state.n)).sink(
        "seen_out", CollectSink(keep="last"))
    keyed.window(rs.windows.Tumbling(1)).reduce("per_second", operator.add).sink("windows", CollectSink())
    earlier = tmp_path / "data" / "earlier"  # a start writes its hold into the origin's run (B5): not the checkout
    shutil.copytree(EARLIER, earlier)
    result = job.run(from_checkpoint=str(earlier))
    assert dict(result.outputs["sums"]) == expected_sums(840)
    assert dict(result.outputs["seen_out"]) == {k: 840 // KEYS for k in range(KEYS)}
    # The windows' output restored; the 0.1.0 run had ended, so its watermark is the end of
    # time and every new number is late for the window step (as with any finished run).
    assert sorted(w.value for _, w in result.outputs["windows"]) == list(range(420))
    assert result.steps["per_second"].late == 420
