"""The audit reports a match for a job that keeps every record and a mismatch for one that
drops some; the CLI exits 0 or 1 accordingly."""
import subprocess
import sys

import raystream as rs
from raystream.sinks import CollectSink
from raystream.sources import SequenceSource


def audited_job(name: str, keep) -> rs.Job:
    job = rs.Job(name, parallelism=2, checkpoint=rs.CheckpointConfig(interval=0.2),
                 audit=rs.Audit(source_id=lambda i: i, sink_id=lambda r: r["id"]))
    (job.source("ids", SequenceSource(6_000, partitions=2, rate=6_000))
        .filter("keep", keep)
        .map("row", lambda i: {"id": i})
        .sink("out", CollectSink()))
    return job


def cli_audit(root: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raystream.cli", "checkpoints", "audit", root],
                          capture_output=True, text=True, timeout=60)


def test_a_complete_job_audits_clean():
    result = audited_job("complete", lambda i: True).run()
    lines = rs.audit_checkpoints(result.checkpoint_root, result.run_id)
    assert len(lines) >= 2 and all(line.matches for line in lines)
    assert lines[-1].source_records == lines[-1].sink_records == 6_000
    proc = cli_audit(result.checkpoint_root)
    assert proc.returncode == 0 and "MISMATCH" not in proc.stdout


def test_a_job_that_drops_records_fails_the_audit():
    result = audited_job("lossy", lambda i: i % 1000 != 7).run()
    last = rs.audit_checkpoints(result.checkpoint_root, result.run_id)[-1]
    assert (last.source_records, last.sink_records) == (6_000, 5_994) and not last.matches
    proc = cli_audit(result.checkpoint_root)
    assert proc.returncode == 1 and "MISMATCH" in proc.stdout
