"""`python -m raystream.bench [WORKLOAD ...] [--json FILE] [--plot FILE]`

Runs each workload back to back in one process: with no periodic checkpoints, then
under each guarantee with 1 s checkpoints (billing_dedup: exactly-once against
at-least-once with a dedup step, side by side); then its single-process baseline; then
start-up (warm and cold), the bytes of incremental checkpoints against the state that
changed, and a recovery run with a SIGKILL (with the default recovery spares, then
without). Prints a table; `--json` writes every figure so runs can be compared across
commits. Speed is measured here, never in tests.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from typing import Any

from raystream._runtime.control.connect import ensure_ray
from raystream.bench.connectors import connector_workloads
from raystream.bench.measure import (as_json, changed_state, cold_probe, cold_startup, machine, run_workload,
                                     warm_startup)
from raystream.bench.recovery import measure_recovery, plot
from raystream.bench.workloads import MODES, workloads

COLUMNS = (("workload", "workload", "{}"), ("mode", "mode", "{}"), ("ev/s", "events_per_s", "{:,.0f}"),
           ("whole", "whole_run_events_per_s", "{:,.0f}"), ("vs none", "ratio_to_none", "{:.2f}"),
           ("start s", "startup_s", "{:.2f}"), ("cpu s/M", "cpu_s_per_m_events", "{:.1f}"),
           ("lat p50", "latency_p50_s", "{:.2f}"), ("lat p99", "latency_p99_s", "{:.2f}"),
           ("ckpt p50", "checkpoint_p50_s", "{:.3f}"), ("ckpt p99", "checkpoint_p99_s", "{:.3f}"),
           ("align", "alignment_share", "{:.0%}"), ("KB/ckpt", "bytes_per_checkpoint", "{:,.0f}"),
           ("RSS MB", "peak_rss_mb", "{:,.0f}"), ("RSS growth MB", "rss_growth_mb", "{:+,.0f}"), ("1-proc ev/s", "baseline_events_per_s", "{:,.0f}"),
           ("vs 1-proc", "distribution_ratio", "{:.2f}"))


def cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if key == "bytes_per_checkpoint":
        value = value / 2**10
    return fmt.format(value)


def print_table(rows: list[dict[str, Any]]) -> None:
    cells = [[name for name, _, _ in COLUMNS]] + [[cell(r, k, f) for _, k, f in COLUMNS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    for line in cells:
        print("  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))))
    sys.stdout.flush()


def markdown(report: dict[str, Any]) -> str:
    """The results as a Markdown table (docs/benchmarks.md's)."""
    rows = report["results"]
    lines = ["| " + " | ".join(name for name, _, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r, k, f) for _, k, f in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


#: The figures `side_by_side` compares: (label, key, higher is better).
COMPARED = (("throughput", "events_per_s", True), ("CPU per event", "cpu_s_per_m_events", False),
            ("checkpoint p50", "checkpoint_p50_s", False), ("checkpoint p99", "checkpoint_p99_s", False),
            ("bytes per checkpoint", "bytes_per_checkpoint", False), ("peak memory", "peak_rss_mb", False),
            ("keys held at most", "state_keys_peak", False))


def side_by_side(rows: list[dict[str, Any]]) -> str:
    """One line comparing each row after the first with the first (billing_dedup: at-least-once
    with dedup against exactly-once): each figure as a ratio, and whether it is the better one."""
    first, lines = rows[0], []
    for row in rows[1:]:
        parts = []
        for label, key, higher in COMPARED:
            a, b = first.get(key), row.get(key)
            if a and b is not None:
                better = b > a if higher else b < a
                parts.append(f"{label} x{b / a:.2f} ({'better' if better else 'worse' if b != a else 'same'})")
        lines.append(f"{row['workload']}: {row['mode']} against {first['mode']}: " + ", ".join(parts or ["-"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    if argv is None and sys.argv[1:] == ["--cold-probe"]:
        cold_probe()
        return
    parser = argparse.ArgumentParser(prog="python -m raystream.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workloads", nargs="*", metavar="WORKLOAD",
                        help="wordcount, wordcount_minibatch, wordcount_combine, wordcount_arrow, wordcount_columnar, billing, "
                             "billing_dedup (exactly-once against at-least-once with dedup, whatever --modes), billing_arrow, "
                             "state_1k, state_1m, state_5m, state_ttl (keys held forever against with a TTL, whatever --modes), "
                             "slow_sink, "
                             "nexmark_q0 .. nexmark_q8, nexmark_q0_arrow .. nexmark_q8_arrow (over Arrow), "
                             "and with a server postgres_append, postgres_upsert, kafka_source (default: all)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + ", ".join(MODES))
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    parser.add_argument("--markdown", metavar="FILE", help="write the table as Markdown to FILE")
    parser.add_argument("--plot", metavar="FILE", help="PNG of throughput and checkpoints around the kill")
    parser.add_argument("--scale", type=float, default=1.0, help="input sizes times this (smoke runs: 0.01)")
    parser.add_argument("--no-recovery", action="store_true", help="skip the run with a kill")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up measurements")
    parser.add_argument("--postgres", metavar="DSN", help="add the PostgresSink workloads, writing to this server")
    parser.add_argument("--kafka", metavar="HOST:PORT", help="add the KafkaSource workload, reading from this broker")
    parser.add_argument("--no-changed-state", action="store_true",
                        help="skip weighing incremental checkpoints against the state that changed")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            parser.error(f"unknown mode {m!r}; modes: {', '.join(MODES)}")
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="raystream-bench-") as directory:
        found = workloads(directory, args.scale)
        found.update(connector_workloads(lambda x: max(1_000, int(x * args.scale)), args.postgres, args.kafka))
        names = args.workloads or list(found)
        unknown = [n for n in names if n not in found]
        if unknown:
            parser.error(f"unknown workload {', '.join(unknown)}; workloads: {', '.join(found)}")
        report: dict[str, Any] = {"machine": machine(), "results": [], "startup": {}, "recovery": None,
                                  "recovery_without_spares": None, "changed_state": None}
        startup = {}
        if not args.no_startup:  # cold first: this process has no Ray yet, so it competes with nothing
            startup["cold_s"] = cold_startup()
        ensure_ray()
        if not args.no_startup:
            startup["warm_s"] = warm_startup()
            print(f"start-up of a ten-record job: warm {startup['warm_s']:.2f}s, cold {startup['cold_s']:.2f}s "
                  "(a new process, Ray started)")
        report["startup"] = startup
        print(f"machine: {report['machine']}")
        t_suite = time.perf_counter()
        for name in names:
            workload = found[name]
            rows = []
            for m, mode in (workload.modes or {m: MODES[m] for m in modes}).items():
                run = run_workload(workload, mode, os.path.join(directory, f"chk-{name}-{m}"))
                rows.append(as_json(run))
            base = workload.baseline()
            none = next((r for r in rows if r["mode"] == "none"), None)
            for r in rows:
                r["ratio_to_none"] = r["events_per_s"] / none["events_per_s"] if none and none["events_per_s"] else None
                r["baseline_events_per_s"] = workload.events / base
                r["distribution_ratio"] = r["events_per_s"] / r["baseline_events_per_s"]
            report["results"].extend(rows)
            print_table(rows)
            if workload.modes and len(rows) > 1:
                print(side_by_side(rows))
        print(f"workloads took {time.perf_counter() - t_suite:.0f}s")
        if not args.no_changed_state:
            # a few seconds at least, so that some checkpoints are incremental ones
            keys, events = max(1_000, int(1_000_000 * min(args.scale, 1.0))), max(2_000_000, int(3_000_000 * args.scale))
            report["changed_state"] = ch = changed_state(keys, events, os.path.join(directory, "chk-changed"))
            print(f"incremental checkpoints ({keys:,} keys): {ch['written_kb_p50'] or 0:,.0f} KB written per "
                  f"checkpoint for {ch['changed_kb_p50'] or 0:,.0f} KB of changed state (median ratio "
                  f"{ch['ratio_p50'] or 0:.2f}, max {ch['ratio_max'] or 0:.2f}; {ch['ratio_run']:.2f} over the run, "
                  "bases included)")
        if not args.no_recovery:
            for spares in (30.0, False):  # the defaults (spares kept after 30 s), then without spares
                rec = measure_recovery(directory, spares=spares)
                report["recovery_without_spares" if spares is False else "recovery"] = rec.as_json()
                back = "never" if rec.back_to_95pct_s is None else f"{rec.back_to_95pct_s:.2f}s"
                print(f"recovery{' without recovery_spares' if spares is False else ''} (billing, SIGKILL {rec.killed} at "
                      f"{rec.steady_events_per_s:,.0f} events/s): first committed output {rec.first_commit_s:.2f}s "
                      f"after the kill, 95% throughput after {back}, {rec.records_replayed:,} records replayed")
                if args.plot and spares is not False:
                    m = report["machine"]
                    plot(rec, args.plot, f"billing, exactly-once, 1 s checkpoints, SIGKILL of {rec.killed}; "
                                         f"{m['date']}, {m['cores']} cores, {m['arch']}, Ray {m['ray']}")
                    print(f"plot: {args.plot}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
            print(f"json: {args.json}")
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(markdown(report))


if __name__ == "__main__":
    main()
