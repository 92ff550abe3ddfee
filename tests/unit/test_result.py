"""A job's result prints as one short line, and as a table of its steps in a notebook."""
from raystream.result import CheckpointStats, JobResult, StepMetrics


def result() -> JobResult:
    return JobResult("wc", "finished", 1.234, {"lines": StepMetrics(0, 186), "count<&>": StepMetrics(186, 86, 2, 1)},
                     {"counts": list(range(100_000))}, checkpoints=CheckpointStats(completed=3, failed=1),
                     restarts=2)


def test_printed_it_is_one_short_line_whatever_its_outputs_hold():
    assert str(result()) == repr(result()) == "<JobResult wc: finished in 1.23s, 2 steps, 3 checkpoints, 2 restarts>"


def test_in_a_notebook_it_is_a_table_of_its_steps_with_names_escaped():
    page = result()._repr_html_()
    assert "<td>count&lt;&amp;&gt;</td><td>186</td><td>86</td><td>2</td><td>1</td>" in page
    assert "3 checkpoints, 1 failed; 2 restarts" in page
