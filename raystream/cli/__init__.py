"""The `raystream` command line.

    raystream run JOBFILE [--parallelism N] [--guarantee G] [--checkpoint-interval S]
                          [--checkpoint-storage URI] [--resume] [--chaos N] [--seed S]
    raystream submit JOBFILE --address http://HEAD:8265 [run options] [--no-follow]
    raystream jobs list|status|logs|stop [ID] --address http://HEAD:8265
    raystream checkpoints audit URI

JOBFILE is a Python file that defines `job` (a raystream.Job). It may also define
`setup(resume)`, called before the run, and `report(result)`, called with the JobResult
after it; a report that returns False makes the command exit with status 1.
"""
from __future__ import annotations

import logging

import click

from raystream.cli.checkpoints import checkpoints
from raystream.cli.cluster import jobs, submit
from raystream.cli.run import run


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def main(verbose: int) -> None:
    """raystream: exactly-once stream processing on Ray."""
    level = logging.WARNING - 10 * min(verbose, 2)
    # Plain lines by default (one per recovery, say); -v adds where each came from.
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose
                        else "%(message)s")


for command in (run, submit, jobs, checkpoints):
    main.add_command(command)
