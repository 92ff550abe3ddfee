"""`raystream checkpoints`: list a job's checkpoints, show a step's keyed state, audit
committed output against the sources."""
from __future__ import annotations

import sys
import time

import click
from rich.table import Table
from rich.text import Text

from raystream.audit import audit_checkpoints
from raystream.checkpoints import list_checkpoints, read_state
from raystream.cli.common import fail, make_console, one_line_errors, verbose_option
from raystream.errors import RaystreamError


@click.group()
def checkpoints() -> None:
    """Inspect a job's checkpoints."""


@checkpoints.command("audit")
@verbose_option
@click.argument("uri")
@click.option("--run", "run_id", help="The run to audit (default: the newest with a checkpoint).")
def audit_command(uri: str, run_id: str | None) -> None:
    """Compare what sinks committed with what sources emitted, per checkpoint.

    URI is the job's checkpoint root: <checkpoint storage>/<job name>."""

    console = make_console()
    with one_line_errors(console, f"reading {uri}"):
        lines = audit_checkpoints(uri, run_id)
    if not lines:
        console.print(f"no committed checkpoint under {uri}")
        sys.exit(1)
    table = Table(title=f"audit of run {lines[0].run_id}")
    for column in ("checkpoint", "source records", "sink records", "ids", "verdict"):
        table.add_column(column, justify="right")
    for line in lines:
        ids = "same" if line.source_digest == line.sink_digest else "DIFFERENT"
        table.add_row(str(line.checkpoint_id), f"{line.source_records:,}", f"{line.sink_records:,}", ids,
                      "match" if line.matches else Text("MISMATCH", style="bold red"))
    console.print(table)
    sys.exit(0 if all(line.matches for line in lines) else 1)


@checkpoints.command("ls")
@verbose_option
@click.argument("uri")
def ls_command(uri: str) -> None:
    """The checkpoints of one run: id, time, size, duration and status (complete, final,
    refused, void, incomplete). URI is a job's checkpoint root (its newest run) or a run."""
    console = make_console()
    with one_line_errors(console, f"reading {uri}"):
        infos = list_checkpoints(uri)
    if not infos:
        click.echo(f"no checkpoint under {uri} yet: its run has taken none")
        return
    table = Table(title=f"run {infos[0].run_id}" if infos else uri)
    for column in ("id", "time (UTC)", "size", "duration", "status"):
        table.add_column(column, justify="right" if column in ("id", "size", "duration") else "left")
    for info in infos:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info.created)) if info.created else ""
        status = info.status if not info.reason else f"{info.status}: {info.reason}"
        table.add_row(str(info.checkpoint_id), when, f"{info.size:,} B" if info.size else "",
                      f"{info.duration * 1000:.0f} ms" if info.duration else "", status)
    console.print(table)
    final = [i for i in infos if i.status in ("complete", "final")]
    if final:  # what to pass to --from
        click.echo(f"newest complete: {final[-1].uri}")


@checkpoints.command("inspect")
@verbose_option
@click.argument("uri")
@click.option("--step", "step_id", required=True, help="A reduce or stateful_map step.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Rows to show.")
def inspect_command(uri: str, step_id: str, limit: int) -> None:
    """The keyed state of one step in a checkpoint, as a table (key, value, subtask). URI
    is a checkpoint (a savepoint's URI), a run or a job root (the newest checkpoint)."""
    console = make_console()
    with one_line_errors(console, f"reading {uri}"):
        table = read_state(uri, step_id)
    out = Table(title=f"{step_id}: {table.num_rows:,} keys" + (f", first {limit}" if table.num_rows > limit else ""))
    for column in table.column_names:
        out.add_column(column)
    for row in table.slice(0, limit).to_pylist():
        out.add_row(*(str(row[c]) for c in table.column_names))
    console.print(out)


@checkpoints.command("key")
@verbose_option
def key_command() -> None:
    """Show this machine's checkpoint key: its id and where it is (made if there is none).

    Checkpoints are signed with it (docs/security.md); every process that writes or reads
    a job's checkpoints needs the same key. The key itself is never printed."""
    from raystream._runtime.state import signing

    try:
        key = signing.current(create=True)
    except RaystreamError as exc:
        fail(make_console(stderr=True), exc)
    click.echo(f"checkpoint key {key.key_id} from {key.source}")
    if signing.unsigned():
        click.echo(f"{signing.UNSIGNED_ENV} is set: unsigned checkpoints are accepted unverified")
