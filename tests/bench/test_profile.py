"""The profiler's reading of py-spy's collapsed stacks (no Ray, no py-spy)."""
from raystream.bench.profile import read_collapsed


def test_collapsed_stacks_become_self_and_inclusive_shares(tmp_path):
    path = tmp_path / "totals[0].txt"
    path.write_text(
        "run (site-packages/ray/_private/worker.py:900);process (/x/raystream/_runtime/actor.py:10);"
        "fold (/x/raystream/_runtime/operators/aggregate_op.py:55) 6\n"
        "run (site-packages/ray/_private/worker.py:900);process (/x/raystream/_runtime/actor.py:12);"
        "group_by (/y/site-packages/pyarrow/table.py:7) 3\n"
        "run (site-packages/ray/_private/worker.py:900);poll (/y/site-packages/ray/util.py:3) 1\n")
    profile = read_collapsed("totals[0]", str(path))
    assert profile.samples == 10
    assert profile.self_time(2) == [("fold (raystream/_runtime/operators/aggregate_op.py)", 0.6),
                                    ("group_by (site-packages/pyarrow/table.py)", 0.3)]
    # a function is one entry whatever line it was on; a frame counts once per sample
    assert profile.under(1) == [("process (raystream/_runtime/actor.py)", 0.9)]
