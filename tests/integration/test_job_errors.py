"""A failing job stops cleanly: a clear error, no hang, no actor left behind."""
import time

import pytest

import raystream as rs
from raystream.sinks import CollectSink
from raystream.sources import FileSource, SequenceSource

from tests.helpers.support import live_job_actors, wait_until


def wait_no_live_actors(timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while live := live_job_actors():
        assert time.monotonic() < deadline, f"actors still alive: {live}"
        time.sleep(0.1)


def explode_on_4242(x):
    if x == 4242:
        raise KeyError("no such customer")
    return x


def test_a_raising_user_function_fails_the_job_with_step_record_and_traceback():
    job = rs.Job("boom", parallelism=2)
    (job.source("nums", SequenceSource(100_000, partitions=2))
        .map("lookup", explode_on_4242)
        .key_by("k", lambda x: x % 10).reduce("sum", lambda a, b: a + b)
        .sink("out", CollectSink()))
    with pytest.raises(rs.StepFailedError) as info:
        job.run()
    err = info.value
    assert err.step_id == "lookup"
    assert err.record_repr == "4242"
    assert "KeyError: 'no such customer'" in err.error
    assert "explode_on_4242" in err.traceback_text
    wait_no_live_actors()


def test_a_malformed_jsonl_line_fails_the_job_naming_file_and_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("".join(f'{{"id": {i}}}\n' for i in range(100)) + '{"id": \n')
    job = rs.Job("badjson")
    job.source("events", FileSource(str(path), format="jsonl")).sink("out", CollectSink())
    with pytest.raises(rs.JobFailedError, match=r"events\.jsonl:101: malformed JSON"):
        job.run()
    wait_no_live_actors()


def test_a_missing_input_file_fails_before_any_actor_starts(tmp_path, monkeypatch):
    created = []
    from raystream._runtime.control import coordinator

    monkeypatch.setattr(coordinator.JobCoordinator, "options", lambda *a, **k: created.append(k))
    job = rs.Job("missing")
    job.source("in", FileSource(str(tmp_path / "absent.txt"))).sink("out", CollectSink())
    with pytest.raises(rs.SourceError, match="no file matching"):
        job.run()
    assert created == []


def test_an_unroutable_key_fails_the_job_clearly():
    job = rs.Job("badkey")
    (job.source("nums", SequenceSource(10))
        .key_by("k", lambda x: [x]).reduce("r", lambda a, b: a)
        .sink("out", CollectSink()))
    with pytest.raises(rs.JobFailedError, match="key_by function must return str"):
        job.run()
    wait_no_live_actors()


def test_a_file_sink_into_a_folder_that_cannot_be_made_fails_before_anything_starts(tmp_path):
    (tmp_path / "a-file").write_text("not a directory\n")
    job = rs.Job("unwritable")
    job.source("in", SequenceSource(10)).sink("out", rs.sinks.FileSink(str(tmp_path / "a-file" / "out")))
    with pytest.raises(rs.SinkError, match=r"FileSink cannot write .*a-file is a file, not a directory"):
        job.start()
    assert not live_job_actors()


class _WriterThatCannotStart(rs.sinks.Sink):
    """A sink whose writer fails the same way every time it is built."""

    def build_writer(self, context):
        raise ValueError("the device is full")


def test_an_internal_failure_that_repeats_before_any_checkpoint_is_not_retried_ten_times():
    job = rs.Job("repeats", restart=rs.RestartStrategy.fixed_delay(max_restarts=10, delay=0.1))
    job.source("in", SequenceSource(10)).sink("out", _WriterThatCannotStart())
    with pytest.raises(rs.JobFailedError, match=r"the device is full \(3 times the same before any checkpoint"):
        job.run()  # the third attempt's failure ends the job, not the tenth
    wait_no_live_actors()


def test_status_after_a_job_failed_says_failed_with_its_final_figures():
    """wait() kills the coordinator of an ended job; status() used to ask it anyway and
    said "restarting" from then on."""
    job = rs.Job("failing-status")
    (job.source("nums", SequenceSource(100_000, rate=4000))  # record 4242 after about a second of metrics
        .map("lookup", explode_on_4242).sink("out", CollectSink()))
    handle = job.start()
    wait_until(lambda: handle.status().state == "failed", "the coordinator reporting the failure")
    with pytest.raises(rs.StepFailedError):
        handle.wait()
    wait_no_live_actors()  # the coordinator too: nothing is asked any more
    status = handle.status()
    assert status.state == "failed" and status.subtasks == 0
    assert status.steps["lookup"].records_in > 0 and status.steps["nums"].records_out > 0
    assert handle.status() == status  # final: it no longer changes
    assert handle.metrics().num_rows == 3 and 0 < sum(handle.metrics()["records_in"].to_pylist())


def test_status_after_a_job_finished_says_finished_with_its_result_figures():
    job = rs.Job("finishing-status")
    job.source("nums", SequenceSource(1000)).map("twice", lambda x: 2 * x).sink("out", CollectSink())
    handle = job.start()
    result = handle.wait()
    wait_no_live_actors()
    status = handle.status()
    assert (status.state, status.elapsed, status.steps) == ("finished", result.duration, result.steps)
    assert status.steps["twice"].records_out == 1000 and handle._supervisor.status() == status
