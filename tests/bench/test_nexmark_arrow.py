"""Each single-process baseline of the columnar Nexmark workloads computes its query: the
same result as the per-record query's reference over the same events (so a baseline
cannot be fast by being wrong). Small batches, so that results span batches."""
from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from raystream.bench.nexmark_arrow import BASELINES, timed
from raystream.connectors import nexmark as nx

NEXMARK = Path(__file__).resolve().parents[2] / "jobs" / "nexmark"
# 30 s of event time, out of order by up to half a second: bids before their auction (q4, q6)
CONFIG = nx.NexmarkConfig(events=30_000, partitions=2, event_rate=1_000, out_of_order=0.5)


@pytest.fixture(scope="module")
def events() -> list:
    return list(nx.events(CONFIG))


@pytest.mark.parametrize("query", sorted(BASELINES))
def test_the_baseline_equals_the_reference(query, events):
    reference = runpy.run_path(str(NEXMARK / f"{query}.py"), run_name=f"nexmark_{query}")["reference"]
    expected = reference(events)
    table = BASELINES[query](CONFIG, 4_096)
    rows = list(zip(*(column.to_pylist() for column in table.columns)))
    assert expected, "the reference of the test configuration is not empty"
    assert (dict(rows) if isinstance(expected, dict) else sorted(rows)) == expected
    assert len(rows) == len(expected), "no key twice"


def test_timed_is_the_seconds_of_a_run():
    assert timed("q0", nx.NexmarkConfig(events=1_000)) > 0


def test_the_q3_baseline_waits_as_the_job_does(events):
    reference = runpy.run_path(str(NEXMARK / "q3.py"), run_name="nexmark_q3")["reference"]
    table = BASELINES["q3"](CONFIG, 4_096, wait=2.0)
    assert sorted(zip(*(column.to_pylist() for column in table.columns))) == reference(events, wait=2.0)
    assert table.num_rows < len(reference(events)), "the wait decides some matches here"
