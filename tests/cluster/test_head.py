"""A real Ray head started with `ray start --head` (token authentication on, as Ray 2.60
does by default; dashboard and Jobs API on 127.0.0.1, free ports), used the way a user
would: `RAY_ADDRESS=... raystream run`, `raystream submit` and `raystream jobs ...` in
subprocesses. The head is stopped by the id of the process this module started (never
`ray stop`, which stops every Ray on the machine)."""
import collections
import subprocess
import textwrap
from collections.abc import Iterator

import pytest

from raystream.sinks import read_files
from tests.cluster.heads import RAYSTREAM, Head, ray_head, user_env
from tests.helpers.support import refusing_port, wait_until

pytestmark = pytest.mark.extended

@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    # Ray Jobs sends SIGTERM on stop and SIGKILL this long after: room for a clean stop.
    with ray_head(tmp_path_factory.mktemp("head"), "--num-cpus=2",
                  env=user_env(RAY_JOB_STOP_WAIT_TIME_S="20")) as started:
        yield started


def job_file(tmp_path, *, n: int | None, rate: float) -> str:
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "count_job.py").write_text(textwrap.dedent(f"""
        import raystream as rs
        from raystream.sinks import FileSink
        from raystream.sources import SequenceSource

        job = rs.Job("numbers", parallelism=2, checkpoint=rs.CheckpointConfig(interval=0.3,
                     storage={str(tmp_path / "chk")!r}))
        (job.source("nums", SequenceSource({n}, partitions=2, rate={rate}))
            .map("row", lambda i: {{"id": i}})
            .sink("out", FileSink({str(tmp_path / "out")!r}, roll_interval=1.0)))
    """))  # files roll each second: by FileSink's default (60 s) each submission's output waited a minute
    return str(folder / "count_job.py")


def committed(tmp_path) -> collections.Counter:
    return collections.Counter(r["id"] for r in read_files(str(tmp_path / "out")))


def raystream(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*RAYSTREAM, *args], env=env or user_env(), capture_output=True, text=True,
                          timeout=timeout)


def test_run_with_ray_address_uses_the_clusters_token(head, tmp_path):
    out = raystream("run", job_file(tmp_path, n=3_000, rate=1e9), env=user_env(RAY_ADDRESS=head.gcs))
    assert out.returncode == 0, out.stdout + out.stderr
    assert committed(tmp_path) == collections.Counter(range(3_000))


def test_without_the_token_connecting_fails_in_one_line_that_says_what_to_set(head, tmp_path):
    home = tmp_path / "home"
    home.mkdir()  # no ~/.ray/auth_token; fewer connection retries keep the test short
    out = raystream("run", job_file(tmp_path, n=10, rate=1e9),
                    env=user_env(RAY_ADDRESS=head.gcs, HOME=str(home), RAY_NUM_REDIS_GET_RETRIES="2"))
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 1
    assert f"error: cannot connect to the Ray cluster at {head.gcs}: the cluster wants a token and none is set; " \
           "set RAY_AUTH_TOKEN" in text
    assert "Traceback" not in text and not (tmp_path / "out").exists()


def test_submit_follow_jobs_commands_rescale_and_stop_exactly_once(head, tmp_path):
    """One unbounded job: submitted and followed, found by `jobs list|status|logs`,
    rescaled from 2 to 3 through a savepoint (a new submission), then stopped; what it
    read is committed exactly once across both submissions."""
    submit = subprocess.Popen([*RAYSTREAM, "submit", job_file(tmp_path, n=None, rate=400), "--address",
                               head.jobs_api, "--guarantee", "exactly_once"],
                              env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: committed(tmp_path) if (tmp_path / "out").exists() else None, "committed output", 90)
        listed = raystream("jobs", "list", "--address", head.jobs_api).stdout
        (submission_id,) = [line.split()[0] for line in listed.splitlines() if "RUNNING" in line.split()[1:2]]
        assert raystream("jobs", "status", submission_id, "--address", head.jobs_api).stdout.strip() == "RUNNING"
        assert "raystream run count_job.py --guarantee exactly_once" in \
            raystream("jobs", "logs", submission_id, "--address", head.jobs_api).stdout
        rescaled = raystream("jobs", "rescale", submission_id, "3", "--address", head.jobs_api)
        assert rescaled.returncode == 0, rescaled.stdout + rescaled.stderr
        followed, _ = submit.communicate(timeout=90)
    finally:
        if submit.poll() is None:
            submit.kill()
    assert f"submitted {submission_id}" in followed
    assert "numbers: stopped" in followed, followed[-2000:]  # SIGTERM stopped the sources; the job finished
    assert f"{submission_id}: STOPPED" in followed and submit.returncode == 1
    (savepoint,) = [line.split(" ", 1)[1] for line in rescaled.stdout.splitlines() if line.startswith("savepoint: ")]
    (new_id,) = [line.split()[1] for line in rescaled.stdout.splitlines() if line.startswith("submitted ")]
    before = sum(committed(tmp_path).values())
    wait_until(lambda: sum(committed(tmp_path).values()) > before + 200, "the rescaled job's output", 90)
    logs = raystream("jobs", "logs", new_id, "--address", head.jobs_api).stdout
    assert f"--parallelism 3 --from {savepoint}" in logs
    stopped = raystream("jobs", "stop", new_id, "--address", head.jobs_api)
    assert stopped.returncode == 0 and "stopping" in stopped.stdout
    wait_until(lambda: raystream("jobs", "status", new_id, "--address", head.jobs_api).stdout.strip() == "STOPPED",
               "the rescaled job to stop", 90)
    assert "savepoint: " in raystream("jobs", "logs", new_id, "--address", head.jobs_api).stdout
    ids = committed(tmp_path)
    assert max(ids.values()) == 1  # nothing twice
    for p in (0, 1):  # and each partition's records up to where it stopped, without a gap
        mine = sorted(i for i in ids if i % 2 == p)
        assert mine and mine == list(range(p, p + 2 * len(mine), 2))


def test_an_unreachable_jobs_api_is_one_line(tmp_path):
    with refusing_port() as port:
        out = raystream("jobs", "list", "--address", f"http://127.0.0.1:{port}")
    assert out.returncode == 1
    assert "nothing answered there; check the address" in " ".join(out.stdout.split())


def test_a_job_file_that_would_hide_a_standard_module_is_refused_before_submitting(head, tmp_path):
    path = tmp_path / "numbers.py"
    path.write_text("job = None\n")
    out = raystream("submit", str(path), "--address", head.jobs_api)
    assert out.returncode == 1
    assert "has the name of Python's module 'numbers'" in " ".join(out.stdout.split())
    nojob = tmp_path / "nojob.py"
    nojob.write_text("import raystream as rs\npipeline = rs.Job('x')\n")
    out = raystream("submit", str(nojob), "--address", head.jobs_api)
    assert out.returncode == 1 and "defines no `job`" in " ".join(out.stdout.split())
    assert "nojob" not in raystream("jobs", "list", "--address", head.jobs_api).stdout  # nothing was submitted
