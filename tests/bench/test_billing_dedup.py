"""billing_dedup compares two configurations of one computation: billing under exactly-once,
and billing under at-least-once with a dedup step by event id. Without a failure the two
commit the same output (else the benchmark would compare different work), the dedup step
drops nothing (the generator's ids are unique), and the suite runs the pair whatever
--modes says. (The figures themselves are never asserted: the suite measures speed.)"""
from __future__ import annotations

import collections
import os
import runpy
from collections.abc import Iterator
from pathlib import Path

import pytest

import raystream as rs
from raystream.bench import __main__ as bench_main
from raystream.bench.job_files import billing_job
from raystream.bench.modes import DEDUP_MODES, MODES, Mode, Workload
from raystream.bench.workloads import workloads

BILLING = Path(__file__).resolve().parents[2] / "jobs" / "billing.py"
EVENTS = 12_000  # 100 minutes of event time: two hourly invoices per customer and late reports


@pytest.fixture(autouse=True)
def _billing_env() -> Iterator[None]:
    """billing_job configures jobs/billing.py through BILLING_* variables: undone after each test."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("BILLING_")}
    yield
    for name in [k for k in os.environ if k.startswith("BILLING_")]:
        del os.environ[name]
    os.environ.update(saved)


def test_the_pair_is_exactly_once_without_dedup_and_at_least_once_with_it():
    plain, deduped = DEDUP_MODES["exactly_once"], DEDUP_MODES["at_least_once+dedup"]
    assert (plain.guarantee, plain.dedup) == ("exactly_once", False)
    assert (deduped.guarantee, deduped.dedup) == ("at_least_once", True)
    assert plain.interval == deduped.interval  # the same checkpoint interval
    assert workloads("unused", 0.01)["billing_dedup"].modes is DEDUP_MODES


def test_only_the_dedup_mode_adds_the_dedup_step_and_it_does_not_leak_into_the_next_job(tmp_path):
    deduped = billing_job(1_000, DEDUP_MODES["at_least_once+dedup"], str(tmp_path / "chk"), str(tmp_path / "a"))
    assert {"by_id", "once", "first"} <= set(deduped.steps)
    assert deduped.guarantee == rs.Guarantee.AT_LEAST_ONCE
    plain = billing_job(1_000, MODES["exactly_once"], str(tmp_path / "chk"), str(tmp_path / "b"))
    assert not {"by_id", "once", "first"} & set(plain.steps)
    # what is downstream of the dedup is the same steps in both
    assert set(deduped.steps) - {"by_id", "once", "first"} == set(plain.steps)


def _row(name: str, mode: str, **figures: float) -> dict:
    return {"workload": name, "mode": mode, **figures}


def test_side_by_side_gives_each_figure_as_a_ratio_to_the_first_row():
    rows = [_row("billing_dedup", "exactly_once", events_per_s=20_000, cpu_s_per_m_events=100, checkpoint_p50_s=0.2,
                 checkpoint_p99_s=0.5, bytes_per_checkpoint=1000),
            _row("billing_dedup", "at_least_once+dedup", events_per_s=15_000, cpu_s_per_m_events=120,
                 checkpoint_p50_s=0.1, checkpoint_p99_s=0.5, bytes_per_checkpoint=None)]
    line = bench_main.side_by_side(rows)
    assert line.startswith("billing_dedup: at_least_once+dedup against exactly_once: ")
    assert "throughput x0.75 (worse)" in line and "CPU per event x1.20 (worse)" in line
    assert "checkpoint p50 x0.50 (better)" in line and "checkpoint p99 x1.00 (same)" in line
    assert "bytes per checkpoint" not in line  # a figure one row lacks is left out


def test_the_suite_runs_a_workload_in_its_own_modes_whatever_modes_says(monkeypatch, capsys):
    ran: list[str] = []

    def run(workload: Workload, mode: Mode, storage: str) -> object:
        ran.append(mode.name)
        return mode.name

    def as_json(name: str) -> dict:
        return _row("pair", name, events_per_s=10.0 if name == "exactly_once" else 20.0, cpu_s_per_m_events=1.0)

    pair = Workload("pair", 100, lambda m, s: None, lambda s: 0, lambda: 0.01, modes=DEDUP_MODES)
    monkeypatch.setattr(bench_main, "workloads", lambda directory, scale: {"pair": pair})
    monkeypatch.setattr(bench_main, "connector_workloads", lambda *a: {})
    monkeypatch.setattr(bench_main, "ensure_ray", lambda: None)
    monkeypatch.setattr(bench_main, "run_workload", run)
    monkeypatch.setattr(bench_main, "as_json", as_json)
    bench_main.main(["pair", "--modes", "none", "--no-startup", "--no-recovery", "--no-changed-state"])
    assert ran == list(DEDUP_MODES)
    assert "pair: at_least_once+dedup against exactly_once: throughput x2.00 (better)" in capsys.readouterr().out


# --- the two configurations run on Ray and commit the same output -----------------------

def _totals(directory: Path) -> tuple[list[tuple], dict[str, int]]:
    """Every totals row without its running total (which depends on the order in which a
    customer's events from different partitions met), and each customer's final total."""
    rows = rs.sinks.read_files(str(directory))
    events = sorted(tuple(sorted((k, v) for k, v in r.items() if k != "total")) for r in rows)
    final: dict[str, int] = {}
    for r in rows:
        final[r["customer"]] = max(final.get(r["customer"], 0), r["total"])
    return events, final


def _billed(directory: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """Per customer and hour, cents and events billed: the invoice's final update plus the
    late reports that went to corrections (which of the two a late report reaches depends on
    how far the watermark was, so only their sum is the same from run to run)."""
    billing = runpy.run_path(str(BILLING), run_name="billing_reference")
    billed: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0])
    final: dict[tuple[str, str], dict] = {}
    for row in rs.sinks.read_files(f"{directory}_invoices"):
        key = (row["customer"], row["hour"])
        if key not in final or row["events"] > final[key]["events"]:
            final[key] = row
    for key, row in final.items():
        billed[key][0] += row["cents"]
        billed[key][1] += row["events"]
    for c in rs.sinks.read_files(f"{directory}_corrections"):
        key = (c["customer"], billing["_hour"](c["time"]))
        billed[key][0] += c["cents"]
        billed[key][1] += 1
    return {k: (v[0], v[1]) for k, v in billed.items()}


@pytest.mark.usefixtures("ray_local")
@pytest.mark.extended  # 14 s: it runs the bench twice
def test_without_a_failure_both_configurations_commit_the_same_output(tmp_path):
    outs, results = {}, {}
    for name, mode in DEDUP_MODES.items():
        outs[name] = tmp_path / f"out-{name.replace('+', '-')}"
        job = billing_job(EVENTS, mode, str(tmp_path / f"chk-{name}"), str(outs[name]))
        results[name] = job.run()
    plain, deduped = (outs[name] for name in DEDUP_MODES)
    dedup_step = results["at_least_once+dedup"].steps["once"]
    assert dedup_step.records_in == dedup_step.records_out == EVENTS, "unique ids: the dedup step drops none"
    assert "once" not in results["exactly_once"].steps
    events, final = _totals(plain)
    assert len(events) == EVENTS and sum(final.values()) > 0
    assert _totals(deduped) == (events, final)
    billed = _billed(plain)
    assert sum(n for _, n in billed.values()) == EVENTS  # every event billed once, on time or corrected
    assert _billed(deduped) == billed
