"""The benchmark suite runs end to end at a small scale and writes what it promises:
the JSON every comparison across commits reads, and the recovery plot. (The figures
themselves are never asserted: speed is measured by the suite, not by tests.)"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.extended  # starts a Ray of its own and runs for a minute or two


def test_a_small_run_writes_the_json_and_the_plot(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "recovery.png"
    proc = subprocess.run([sys.executable, "-m", "raystream.bench", "state_1k", "nexmark_q6", "slow_sink", "--scale", "0.1",
                           "--modes", "none,exactly_once", "--json", str(out), "--plot", str(png)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["machine"]["cores"] and report["startup"]["warm_s"] > 0 and report["startup"]["cold_s"] > 0
    rows = {(r["workload"], r["mode"]): r for r in report["results"]}
    assert set(rows) == {(w, m) for w in ("state_1k", "nexmark_q6", "slow_sink") for m in ("none", "exactly_once")}
    for r in rows.values():
        for key in ("events_per_s", "startup_s", "peak_rss_mb", "cpu_s_per_m_events", "baseline_events_per_s"):
            assert r[key] > 0, (r["workload"], r["mode"], key)
        assert r["ratio_to_none"] is not None
    # at this scale a run may end before its first periodic checkpoint; the final one counts for bytes
    assert rows[("state_1k", "exactly_once")]["bytes_per_checkpoint"] > 0
    assert rows[("state_1k", "exactly_once")]["latency_p99_s"] is not None  # creation to commit
    assert "rss_growth_mb" in rows[("slow_sink", "none")]
    changed = report["changed_state"]  # incremental checkpoints weighed against the state that changed
    assert changed["ratio_run"] > 0 and changed["keys"] > 0
    recovery = report["recovery"]
    assert recovery["first_commit_s"] > 0 and recovery["records_replayed"] >= 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unknown_workload_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "raystream.bench", "nexmark_q9"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "unknown workload nexmark_q9" in proc.stderr
