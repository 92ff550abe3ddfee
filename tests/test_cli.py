"""`raystream run` runs a job file end to end in its own process."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def raystream(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raystream.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=240)


def test_run_wordcount_prints_summary_and_top_words():
    proc = raystream("run", "jobs/wordcount.py", "--parallelism", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wordcount: finished" in proc.stdout
    assert "186 words, 86 distinct; the top 10:" in proc.stdout
    assert "    18  the" in proc.stdout


def test_a_file_without_job_is_a_usage_error(tmp_path):
    (tmp_path / "nojob.py").write_text("x = 1\n")
    proc = raystream("run", str(tmp_path / "nojob.py"))
    assert proc.returncode == 2
    assert "must define `job = raystream.Job(...)`" in proc.stderr


def test_a_failing_job_exits_1_with_the_error(tmp_path):
    (tmp_path / "bad.py").write_text(
        "import raystream as rs\n"
        "job = rs.Job('bad')\n"
        "job.source('in', rs.sources.FileSource('/nonexistent/*.txt')).sink('o', rs.sinks.PrintSink())\n")
    proc = raystream("run", str(tmp_path / "bad.py"))
    assert proc.returncode == 1
    assert "no file matching '/nonexistent/*.txt'" in proc.stdout


@pytest.mark.extended  # the Quickstart's first command, at a smaller size
def test_billing_with_chaos_verifies_exactly_once(tmp_path):
    import os

    env = dict(os.environ, BILLING_EVENTS="20000", BILLING_RATE="5000", BILLING_OUT=str(tmp_path / "out"))
    proc = subprocess.run([sys.executable, "-m", "raystream.cli", "run", str(ROOT / "jobs" / "billing.py"),
                           "--chaos", "2", "--seed", "3", "--checkpoint-interval", "0.5"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "chaos: killed 2 subtask processes" in proc.stdout
    assert "missing 0, duplicated 0, wrong totals 0" in proc.stdout
    assert "late reports in corrections; wrong 0, duplicated 0, misplaced 0" in proc.stdout
    assert "VERDICT: exactly once" in proc.stdout
    # A quiet terminal: one line per recovery, none of Ray's notices about what raystream handles
    output = proc.stdout + proc.stderr
    assert output.count("job billing recovered in ") == 2, output[-3000:]
    for noise in ("A worker died or was killed", "Token authentication is enabled", "(raylet)"):
        assert noise not in output, noise


@pytest.mark.extended
def test_orders_to_postgres_with_chaos_is_exactly_once(tmp_path, kafka_bootstrap, pg_dsn):
    import os
    import re
    import uuid

    env = dict(os.environ, ORDERS_KAFKA=kafka_bootstrap, ORDERS_PG_DSN=pg_dsn, ORDERS_COUNT="300000",
               ORDERS_TOPIC=f"orders-{uuid.uuid4().hex[:8]}")
    proc = subprocess.run([sys.executable, "-m", "raystream.cli", "run", str(ROOT / "jobs" / "orders_to_postgres.py"),
                           "--chaos", "2", "--seed", "1", "--checkpoint-interval", "0.3"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    killed = re.search(r"chaos: killed (\d+) subtask processes", proc.stdout)
    assert killed and int(killed.group(1)) >= 1, proc.stdout[-3000:]
    assert "300,000 orders of 300,000; 0 customers wrong; 0 prepared transactions left. EXACTLY ONCE" in proc.stdout
