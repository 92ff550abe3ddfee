"""The `raystream` command line.

    raystream run JOBFILE [--parallelism N] [--guarantee G] [--checkpoint-interval S]
                          [--checkpoint-storage URI] [--resume] [--chaos N] [--seed S]
    raystream submit JOBFILE --address http://HEAD:8265 [run options] [--no-follow]
    raystream jobs list|status|logs|stop [ID] --address http://HEAD:8265
    raystream checkpoints audit URI
    raystream cluster init --region REGION --ssh-cidr CIDR [--bucket B] [--vpc-id V]

JOBFILE is a Python file that defines `job` (a raystream.Job) and runs nothing when it
is imported: the command runs `job`. It may also define `setup(resume)`, called before
the run, and `report(result)`, called with the JobResult after it; a report that returns
False makes the command exit with status 1. A job file ends with

    if __name__ == "__main__":
        from raystream.cli import run_file

        run_file(__file__)

so that `python JOBFILE [options]` is `raystream run JOBFILE [options]`.
"""
from __future__ import annotations

import sys

import click

from raystream.cli.checkpoints import checkpoints
from raystream.cli.cluster import cluster_group, jobs, submit
from raystream._version import __version__
from raystream.cli.common import configure_logging, error_line, make_console
from raystream.cli.run import run
from raystream.job import importing_job_file


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug); also after a command.")
@click.version_option(__version__, "--version", prog_name="raystream")
def main(verbose: int) -> None:
    """raystream: exactly-once stream processing on Ray."""
    configure_logging(verbose)


for command in (run, submit, jobs, checkpoints, cluster_group):
    main.add_command(command)


def run_file(path: str) -> None:
    """`python JOBFILE [options]`: what `raystream run JOBFILE [options]` does. Called from
    a job file's `if __name__ == "__main__":` block only."""
    importing = importing_job_file()
    if importing is not None:  # run_file outside the guard: the command is importing the file
        error_line(make_console(), f"{importing} calls run_file when it is imported; put it under "
                                   f"`if __name__ == \"__main__\":`")
        sys.exit(1)
    main(["run", path, *sys.argv[1:]])
