"""A job's result prints as one short line, and as a table of its steps in a notebook."""
from raystream.result import CheckpointStats, JobResult, JobStatus, StepMetrics


def result() -> JobResult:
    return JobResult("wc", "finished", 1.234, {"lines": StepMetrics(0, 186), "count<&>": StepMetrics(186, 86, 2, 1)},
                     {"counts": list(range(100_000))}, checkpoints=CheckpointStats(completed=3, failed=1),
                     restarts=2)


def test_printed_it_is_one_short_line_whatever_its_outputs_hold():
    assert str(result()) == repr(result()) == "<JobResult wc: finished in 1.23s, 2 steps, 3 checkpoints, 2 restarts>"


def test_a_status_prints_as_one_short_line():
    steps = {f"step{i}": StepMetrics(10 ** 6, 10 ** 6) for i in range(12)}
    status = JobStatus("billing", "running", 12.34, steps, subtasks=6, pids={f"c[{i}]": 100 + i for i in range(6)},
                       checkpoints=CheckpointStats(completed=5), restarts=1)
    assert repr(status) == "<JobStatus billing: running for 12.3s, 12 steps, 6 subtasks, 5 checkpoints, 1 restart>"
    waiting = JobStatus("j", "starting", 0.5, waiting="2 subtasks wait for 1 CPU each")
    assert repr(waiting) == "<JobStatus j: starting for 0.5s, 0 steps, 0 subtasks, 0 checkpoints; waiting: 2 subtasks wait for 1 CPU each>"


def test_in_a_notebook_it_is_a_table_of_its_steps_with_names_escaped():
    page = result()._repr_html_()
    assert "<td>count&lt;&amp;&gt;</td><td>186</td><td>86</td><td>2</td><td>1</td>" in page
    assert "3 checkpoints, 1 failed; 2 restarts" in page


# --- handle.metrics(): a table that prints short and shows as a table in a notebook ------------

def metrics(steps=("numbers", "sum"), subtasks=2):
    import datetime

    from raystream.result import Metrics

    return Metrics.of([
        {"step": step, "subtask": i, "chain": f"{step}+out", "records_in": 1234567 * i, "records_out": 1000 + i,
         "in_per_s": 2001.6, "out_per_s": 0.0, "backpressure_s": 0.125, "state_keys": 50, "snapshot_bytes": 4096,
         "alignment_s": 0.5, "late_records": 3,
         "watermark": datetime.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=datetime.timezone.utc) if i else None}
        for step in steps for i in range(subtasks)])


def test_metrics_print_as_a_short_aligned_table_of_the_key_columns():
    assert repr(metrics()).splitlines() == [
        "Metrics: 4 rows, one per step and subtask (all 13 columns: .table)",
        "step     subtask  records_in  records_out  in_per_s  out_per_s  backpressure_s  state_keys",
        "numbers        0           0        1,000     2,002          0            0.12          50",
        "numbers        1   1,234,567        1,001     2,002          0            0.12          50",
        "sum            0           0        1,000     2,002          0            0.12          50",
        "sum            1   1,234,567        1,001     2,002          0            0.12          50",
    ]
    assert str(metrics()) == repr(metrics())


def test_printed_metrics_of_a_big_job_stay_a_screen_long_and_cut_long_step_names():
    text = repr(metrics(steps=[f"step-{n}-" + "x" * 40 for n in range(30)], subtasks=4)).splitlines()
    assert len(text) == 1 + 1 + 20 + 1 and text[-1] == "... 100 more rows"
    assert text[2].startswith("step-0-xxxxxxxxxxxxxxxxxxxxxx...        0")
    assert max(len(line) for line in text) < 120


def test_metrics_without_rows_say_so():
    assert repr(metrics(subtasks=0)) == "<Metrics: no rows (no subtask has reported yet)>"


def test_metrics_in_a_notebook_are_a_table_of_every_column_with_names_escaped():
    page = metrics(steps=["<b>&co"])._repr_html_()
    assert page.startswith("<p><b>metrics</b>: 2 rows, one per step and subtask</p><table><tr><th>step</th>")
    assert "<th>watermark</th>" in page and "<b>&co" not in page
    assert ("<tr><td>&lt;b&gt;&amp;co</td><td>1</td><td>&lt;b&gt;&amp;co+out</td><td>1,234,567</td><td>1,001</td>"
            "<td>2,002</td><td>0</td><td>0.12</td><td>50</td><td>4,096</td><td>0.50</td><td>3</td>"
            "<td>2024-05-01 12:00:00.250</td></tr>") in page
    assert "more rows" not in page
    assert "... 1 more rows in <code>.table</code>" in metrics(steps=[f"s{n}" for n in range(67)], subtasks=3)._repr_html_()


def test_metrics_work_as_the_pyarrow_table_they_hold():
    import copy
    import pickle

    import pyarrow as pa

    m = metrics()
    assert isinstance(m.table, pa.Table)
    assert m.num_rows == len(m) == 4 and m.schema.names[:5] == ["step", "subtask", "chain", "records_in", "records_out"]
    assert m.select(["step", "subtask"]).to_pylist()[1] == {"step": "numbers", "subtask": 1}
    assert m["records_in"].to_pylist() == m.column("records_in").to_pylist() == [0, 1234567, 0, 1234567]
    assert pa.table(m).equals(m.table)  # the Arrow stream protocol
    assert pickle.loads(pickle.dumps(m)) == copy.copy(m) == m
    assert "to_pylist" in dir(m)
