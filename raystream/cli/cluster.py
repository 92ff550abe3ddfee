"""`raystream cluster init`: the AWS resources of cluster.yaml and a filled-in copy of it;
`raystream submit` and `raystream jobs`: jobs on a Ray cluster, through its Jobs API."""
from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.text import Text

import raystream.cli.cluster_init as cluster_init
from raystream.cli.common import (
    SAVEPOINT_PREFIX,
    fail,
    make_console,
    one_line_errors,
    run_args,
    run_options,
    verbose_option,
)
from raystream.errors import CloudSetupError, JobFailedError


_ADDRESS = click.option("--address", envvar="RAY_API_SERVER_ADDRESS", metavar="URL",
                        help="The cluster's Jobs API, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS).")


def _cluster(address: str | None) -> Any:
    # Imported here so that `raystream --help` and `raystream run` on a laptop do not load the Jobs API client.
    from raystream._runtime.control.submission import Cluster

    if not logging.getLogger().isEnabledFor(logging.INFO):  # the Jobs API client chats at INFO; -v shows it
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("ray.dashboard"):
                logging.getLogger(name).setLevel(logging.WARNING)
    return Cluster(address or "")


@click.command()
@verbose_option
@click.argument("jobfile", type=click.Path(dir_okay=False))
@_ADDRESS
@run_options
@click.option("--no-follow", is_flag=True, help="Print the submission id and return; do not follow the logs.")
@click.option("--dry-run", is_flag=True,
              help="Print the files that would be uploaded (and those left out) and submit nothing.")
def submit(jobfile: str, address: str | None, no_follow: bool, dry_run: bool, **options: Any) -> None:
    """Run JOBFILE on a Ray cluster: prints the submission id, then follows the job's logs
    until it ends (exit status 0 when it succeeded). JOBFILE's folder is shipped along, less
    secret-looking files and what .gitignore ignores (--dry-run lists it)."""
    from raystream._runtime.control.submission import follow_until_done, prepare

    console = make_console()
    try:
        upload = prepare(jobfile)  # before connecting: a dry run needs no cluster
    except Exception as exc:  # RaystreamError
        fail(console, exc)
    if dry_run:
        for line in upload.dry_run_lines():
            click.echo(line)
        return
    click.echo(upload.summary())  # one plain line, unwrapped
    if warning := upload.size_warning():
        console.print(Text.assemble(("warning:", "yellow"), " ", warning))
    try:
        cluster = _cluster(address)
        submission_id = cluster.submit(jobfile, run_args(**options), upload=upload)
    except Exception as exc:  # RaystreamError, or the Jobs API's own (RuntimeError, HTTP errors)
        fail(console, exc)
    console.print(f"submitted {submission_id}")
    if no_follow:
        return
    status = asyncio.run(follow_until_done(cluster, submission_id, lambda text: console.out(text, end="")))
    console.print(f"{submission_id}: {status}")
    sys.exit(0 if status == "SUCCEEDED" else 1)


@click.group()
def jobs() -> None:
    """Act on jobs submitted to a Ray cluster."""


@jobs.command("list")
@verbose_option
@_ADDRESS
def jobs_list(address: str | None) -> None:
    """The cluster's submitted jobs, newest last."""
    console = make_console()
    try:
        submitted = _cluster(address).list()
    except Exception as exc:
        fail(console, exc)
    for job in submitted:  # one plain line each, so ids can be copied and lines grepped
        click.echo(f"{job.submission_id}  {job.status:9s}  {job.entrypoint}")


@jobs.command("status")
@verbose_option
@click.argument("submission_id")
@_ADDRESS
def jobs_status(submission_id: str, address: str | None) -> None:
    """The status of one submitted job: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    try:
        click.echo(_cluster(address).status(submission_id))
    except Exception as exc:
        fail(make_console(), exc)


@jobs.command("logs")
@verbose_option
@click.argument("submission_id")
@_ADDRESS
@click.option("--follow", is_flag=True, help="Keep printing until the job ends.")
def jobs_logs(submission_id: str, address: str | None, follow: bool) -> None:
    """The logs of one submitted job."""
    from raystream._runtime.control.submission import follow_until_done

    try:
        cluster = _cluster(address)
        if follow:
            asyncio.run(follow_until_done(cluster, submission_id, lambda text: click.echo(text, nl=False)))
        else:
            click.echo(cluster.logs(submission_id), nl=False)
    except Exception as exc:
        fail(make_console(), exc)


@jobs.command("stop")
@verbose_option
@click.argument("submission_id")
@_ADDRESS
@click.option("--savepoint", is_flag=True,
              help="Wait until the job has taken its final checkpoint and ended; print that savepoint's URI.")
def jobs_stop(submission_id: str, address: str | None, savepoint: bool) -> None:
    """Stop a submitted job: its sources end, what they read is committed, it finishes."""
    try:
        cluster = _cluster(address)
        if not savepoint:
            stopped = cluster.stop(submission_id)
            click.echo(f"{submission_id}: {'stopping' if stopped else 'already ended'}")
            return
        click.echo(SAVEPOINT_PREFIX + _stop_with_savepoint(cluster, submission_id))
    except Exception as exc:
        fail(make_console(), exc)


def _stop_with_savepoint(cluster: Any, submission_id: str) -> str:
    """Stop the job, wait for it to end, and return the savepoint its run printed."""
    from raystream._runtime.control.submission import follow_until_done

    if not cluster.stop(submission_id):
        raise JobFailedError(f"{submission_id} had already ended ({cluster.status(submission_id)}): no savepoint")
    status = asyncio.run(follow_until_done(cluster, submission_id, lambda text: None))
    found = [line[len(SAVEPOINT_PREFIX):].strip() for line in cluster.logs(submission_id).splitlines()
             if line.startswith(SAVEPOINT_PREFIX)]
    if not found:
        raise JobFailedError(f"{submission_id} ended {status} without a savepoint; see raystream jobs logs "
                              f"{submission_id}")
    return found[-1]


@jobs.command("rescale")
@verbose_option
@click.argument("submission_id")
@click.argument("parallelism", type=click.IntRange(min=1))
@_ADDRESS
def jobs_rescale(submission_id: str, parallelism: int, address: str | None) -> None:
    """Stop a submitted job with a savepoint and submit it again from there at PARALLELISM:
    exactly once across the change. Prints the savepoint, the new submission id and the pause."""
    started = time.monotonic()
    try:
        cluster = _cluster(address)
        savepoint = _stop_with_savepoint(cluster, submission_id)
        click.echo(SAVEPOINT_PREFIX + savepoint)
        new_id = cluster.resubmit(submission_id, run_args(parallelism=parallelism, from_uri=savepoint),
                                  drop=("--parallelism", "--from", "--resume", "--allow-non-restored-state"))
        click.echo(f"submitted {new_id}")
        while cluster.status(new_id) == "PENDING":
            time.sleep(0.5)
    except Exception as exc:
        fail(make_console(), exc)
    click.echo(f"rescaled {submission_id} -> {new_id} at parallelism {parallelism}; "
               f"{time.monotonic() - started:.1f}s from the stop to the new job running")


@click.group("cluster")
def cluster_group() -> None:  # not `cluster`: raystream.cli.cluster must stay this module
    """Prepare a Ray cluster on AWS for raystream."""


@cluster_group.command("init")
@verbose_option
@click.option("--region", metavar="REGION", help="The AWS region (default: the template's, us-east-1).")
@click.option("--ssh-cidr", metavar="CIDR",
              help="Your own address range, the only one that may SSH to the nodes (never 0.0.0.0/0).")
@click.option("--bucket", help="The checkpoint bucket, made if missing (default: raystream-<account id>-<region>).")
@click.option("--vpc-id", help="The VPC the nodes run in (default: the region's default VPC).")
@click.option("--cluster-name", help="Names the group, roles and profiles (default: the template's cluster_name).")
@click.option("--template", default="cluster.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="The cluster config to fill in.")
@click.option("--output", default="cluster.local.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the filled-in config (git ignores cluster.local.yaml).")
def cluster_init_command(region: str | None, ssh_cidr: str | None, bucket: str | None, vpc_id: str | None,
                         cluster_name: str | None, template: str, output: str) -> None:
    """Make, once, what cluster.yaml names in one region: a security group that admits the
    cluster itself and SSH from --ssh-cidr only, instance profiles allowed to use the
    checkpoint bucket (the head's also to launch and stop the workers), and the bucket,
    public access blocked. Then write the template filled in with them, for
    `ray up cluster.local.yaml`. Run it again to reuse what exists (one line per resource
    says which). Credentials come from boto3's usual chain and are never printed."""
    console = make_console()
    try:
        request = cluster_init.make_request(Path(template), region=region, ssh_cidr=ssh_cidr, bucket=bucket,
                                            vpc_id=vpc_id, cluster_name=cluster_name)
    except CloudSetupError as exc:  # before any call to AWS
        fail(console, exc)
    with one_line_errors(console, "cluster init"):
        cluster_init.init_cluster(request, Path(template), Path(output), click.echo,
                                  propagation_wait_s=cluster_init.PROFILE_PROPAGATION_S)
