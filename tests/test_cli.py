"""`raystream run` runs a job file end to end in its own process."""
import subprocess
import sys
from pathlib import Path

import pytest

import raystream as rs

ROOT = Path(__file__).resolve().parents[1]


def raystream(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raystream.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)


def test_python_job_file_runs_as_raystream_run_does():
    """The job file convention: `python jobs/wordcount.py [options]` is `raystream run`."""
    proc = subprocess.run([sys.executable, "jobs/wordcount.py", "--parallelism", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wordcount: finished" in proc.stdout
    assert "186 words, 86 distinct; the top 10:" in proc.stdout
    assert "    18  the" in proc.stdout


def test_version_and_verbose_after_the_command():
    proc = raystream("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"raystream, version {rs.__version__}"
    proc = raystream("run", "no-such-file.py", "-v")  # -v is accepted after the command
    assert proc.returncode == 2 and "job file 'no-such-file.py' does not exist" in proc.stderr


def three_records(name: str) -> str:
    """A job file's text: a job of three records to print, and no guard."""
    return ("import raystream as rs\n"
            f"job = rs.Job({name!r})\n"
            "job.source('in', rs.sources.SequenceSource(3)).sink('o', rs.sinks.PrintSink())\n")


def test_a_job_file_that_runs_its_job_when_imported_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "eager.py").write_text(three_records("eager") + "job.run()\n")
    proc = raystream("run", str(tmp_path / "eager.py"))
    assert proc.returncode == 1
    assert proc.stdout.strip() == (f"error: {tmp_path / 'eager.py'} starts a job when it is imported; `raystream run` "
                                   "runs `job` itself, so put job.run() under `if __name__ == \"__main__\":`")
    assert "Traceback" not in proc.stderr


def test_an_error_with_brackets_is_printed_as_it_is(tmp_path):
    (tmp_path / "brackets.py").write_text(
        "raise ValueError('return [fn(r) for r in records] failed; see [/docs/errors] and [bold]this[/bold]')\n")
    proc = raystream("run", str(tmp_path / "brackets.py"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stdout.strip() == (
        f"error: {tmp_path / 'brackets.py'}:1: ValueError: return [fn(r) for r in records] failed; see "
        "[/docs/errors] and [bold]this[/bold] (-v shows the traceback)")


def test_a_syntax_error_in_a_job_file_is_one_line_with_file_and_line(tmp_path):
    (tmp_path / "broken.py").write_text("import raystream as rs\n\njob = rs.Job('x'\n")
    proc = raystream("run", str(tmp_path / "broken.py"))
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"error: {tmp_path / 'broken.py'}:3: ") and proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stdout + proc.stderr


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


# --- raystream checkpoints: what is wrong, in one line ---------------------------------------

EARLIER = ROOT / "tests" / "data" / "checkpoint-0.1.0"  # a job root, earlier/, written by 0.1.0


def checkpoints_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    from tests.conftest import SECRETS

    env = dict(os.environ if env is None else env, RAYSTREAM_CHECKPOINT_KEY=SECRETS["RAYSTREAM_CHECKPOINT_KEY"])
    return raystream("checkpoints", *args, env=env)


def test_checkpoints_ls_one_level_above_a_job_root_names_the_job_roots():
    proc = checkpoints_cli("ls", str(EARLIER))
    assert proc.returncode == 1
    assert proc.stdout.strip() == (f"error: {EARLIER} is a checkpoint storage, not a job's checkpoint root: it holds "
                                   f"the jobs earlier; give {EARLIER / 'earlier'} (or another of them)")
    ok = checkpoints_cli("ls", str(EARLIER / "earlier"))
    assert ok.returncode == 0 and "final" in ok.stdout, ok.stdout + ok.stderr


def test_checkpoints_audit_of_a_job_without_an_audit_says_so():
    proc = checkpoints_cli("audit", str(EARLIER / "earlier"))
    assert proc.returncode == 1
    assert proc.stdout.startswith("error: run ") and "was not audited: its job has no rs.Audit" in proc.stdout
    assert "match" not in proc.stdout


def test_checkpoints_on_s3_without_credentials_is_one_line(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1")
    proc = checkpoints_cli("ls", "s3://raystream-no-such-bucket/jobs/billing", env=env)
    assert proc.returncode == 1
    assert proc.stdout.startswith("error: reading s3://raystream-no-such-bucket/jobs/billing failed: NoCredentialsError")
    assert proc.stdout.count("\n") == 1 and "Traceback" not in proc.stdout + proc.stderr


def test_a_ray_address_where_nothing_listens_fails_at_once_in_one_line():
    import os
    import time

    started = time.monotonic()
    proc = raystream("run", "jobs/wordcount.py", env=dict(os.environ, RAY_ADDRESS="127.0.0.1:9"))
    assert time.monotonic() - started < 30
    assert proc.returncode == 1
    assert proc.stdout.strip().endswith("error: cannot connect to the Ray cluster at 127.0.0.1:9: nothing answered "
                                        "there; check the address (the head's HOST:6379, or http://HOST:8265 for "
                                        "the Jobs API) and that the head runs")


def test_a_job_that_fails_in_its_workers_prints_one_error_line_and_none_of_theirs(tmp_path):
    (tmp_path / "failing.py").write_text(
        "import raystream as rs\n"
        "class Broken(rs.sinks.Sink):\n"
        "    def build_writer(self, context):\n"
        "        raise OSError('the device is full')\n"
        "job = rs.Job('failing', restart=rs.RestartStrategy.fixed_delay(0.1))\n"
        "job.source('in', rs.sources.SequenceSource(10)).sink('out', Broken())\n")
    proc = raystream("run", str(tmp_path / "failing.py"))
    assert proc.returncode == 1
    output = proc.stdout + proc.stderr
    assert "error: " in proc.stdout and "the device is full" in proc.stdout, output[-3000:]
    assert "pid=" not in output and "\x1b[" not in output, output[-3000:]  # no forwarded worker lines, no ANSI


def test_run_file_outside_the_guard_is_refused_in_one_line(tmp_path):
    (tmp_path / "unguarded.py").write_text(three_records("unguarded") + "from raystream.cli import run_file\n"
                                                                        "run_file(__file__)\n")
    proc = raystream("run", str(tmp_path / "unguarded.py"))
    assert proc.returncode == 1
    assert proc.stdout.strip() == (f"error: {tmp_path / 'unguarded.py'} calls run_file when it is imported; put it "
                                   "under `if __name__ == \"__main__\":`")
