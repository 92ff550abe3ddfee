"""Submitting job files to a Ray cluster through the Ray Jobs API, and acting on the jobs
submitted. A submitted job runs `raystream run FILE ...` as its entrypoint on the
cluster; the job file's folder travels as the runtime environment's working_dir, so
the file and whatever it reads beside it are there, less what upload.py leaves out
(secret-looking files, what .gitignore ignores). Credentials never travel: nodes read
S3 through their instance profile and the token from their own ~/.ray.
"""
from __future__ import annotations

import ast
import logging
import os
import shlex
import sys
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from ray.exceptions import RayError
from ray.job_submission import JobSubmissionClient

from raystream._runtime.control.connect import connection_error, use_cluster_token
from raystream._runtime.control.upload import Upload, plan_upload
from raystream.errors import ConfigError

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Submitted:
    """One submitted job, as `raystream jobs list` shows it."""

    submission_id: str
    status: str
    entrypoint: str


class Cluster:
    """The Jobs API of one cluster (`http://HEAD:8265`)."""

    def __init__(self, address: str):
        if not address:
            raise ConfigError("no cluster address: pass --address http://HEAD:8265 or set RAY_API_SERVER_ADDRESS")
        self.address = address
        has_token = use_cluster_token()
        try:
            self.client = JobSubmissionClient(address)
        except (ConnectionError, RuntimeError, ValueError, RayError) as exc:  # RayError: AuthenticationError
            raise connection_error(address, exc, has_token=has_token) from None

    def submit(self, jobfile: str, run_args: list[str], upload: Upload | None = None) -> str:
        """Start `raystream run JOBFILE RUN_ARGS` on the cluster; returns the submission id.
        `upload` is prepare(jobfile), when the caller has made it already (to show it)."""
        if upload is None:
            upload = prepare(jobfile)
            logger.info("%s", upload.summary())
            if warning := upload.size_warning():
                logger.warning("%s", warning)
        entrypoint = shlex.join(["raystream", "run", os.path.basename(jobfile), *run_args])
        return self.client.submit_job(entrypoint=entrypoint, runtime_env=upload.runtime_env(),
                                      metadata={"raystream_job_file": os.path.basename(jobfile)})

    def list(self) -> list[Submitted]:
        return [Submitted(j.submission_id, str(j.status.value), j.entrypoint)
                for j in self.client.list_jobs() if j.submission_id]

    def status(self, submission_id: str) -> str:
        return str(self.client.get_job_status(submission_id).value)

    def logs(self, submission_id: str) -> str:
        return self.client.get_job_logs(submission_id)

    def follow(self, submission_id: str) -> AsyncIterator[str]:
        return self.client.tail_job_logs(submission_id)

    def stop(self, submission_id: str) -> bool:
        return self.client.stop_job(submission_id)

    def resubmit(self, submission_id: str, run_args: list[str], drop: tuple[str, ...]) -> str:
        """Submit the job `submission_id` ran again, with the same job file and folder, its
        run options except the flags in `drop` (and their values), plus `run_args`."""
        details = self.client.get_job_info(submission_id)
        argv = shlex.split(details.entrypoint)
        if argv[:2] != ["raystream", "run"] or len(argv) < 3:
            raise ConfigError(f"{submission_id} was not submitted by raystream submit ({details.entrypoint!r})")
        kept, skip = argv[:3], False
        for arg in argv[3:]:
            if skip:
                skip = False
            elif arg in drop:
                skip = arg not in ("--resume", "--allow-non-restored-state")  # flags without a value
            else:
                kept.append(arg)
        return self.client.submit_job(entrypoint=shlex.join([*kept, *run_args]), runtime_env=details.runtime_env,
                                      metadata=details.metadata)


def prepare(jobfile: str) -> Upload:
    """Check the job file as far as can be done here, and list what its submission uploads."""
    if not os.path.isfile(jobfile):
        raise ConfigError(f"job file {jobfile!r} does not exist")
    module = os.path.splitext(os.path.basename(jobfile))[0]
    if module in sys.stdlib_module_names:  # its folder is the working dir, first on sys.path there
        raise ConfigError(f"job file {jobfile!r} has the name of Python's module {module!r}, which it would hide "
                          "on the cluster (pyarrow, for one, would not import): rename the file")
    if not defines_job(jobfile):
        raise ConfigError(f"{jobfile} defines no `job`: a job file assigns `job = raystream.Job(...)` at module "
                          "level (see jobs/billing.py)")
    return plan_upload(jobfile)


def defines_job(jobfile: str) -> bool:
    """Whether the file assigns `job` at module level: checked on its syntax, without running
    it here (it may import what only the cluster has)."""
    try:
        with open(jobfile, encoding="utf-8") as f:
            tree = ast.parse(f.read(), jobfile)
    except SyntaxError as exc:
        raise ConfigError(f"{jobfile} is not valid Python: {exc}") from None
    for node in tree.body:
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
        if any(isinstance(t, ast.Name) and t.id == "job" for t in targets):
            return True
    return False


async def follow_until_done(cluster: Cluster, submission_id: str, write: Callable[[str], None]) -> str:
    """Write the job's logs as they come until it ends; returns its final status."""
    async for lines in cluster.follow(submission_id):
        write(lines)
    return cluster.status(submission_id)
