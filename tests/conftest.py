"""Fixtures shared by every test package."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from raystream._runtime.state import signing as _signing


# Tests that do not set RAYSTREAM_CHECKPOINT_KEY (the s3_endpoint fixture does) run in the
# default configuration: a key file made on first use. This one, never the user's own.
_KEY_DIR = tempfile.mkdtemp(prefix="raystream-key-")
os.environ["RAYSTREAM_CHECKPOINT_KEY_FILE"] = os.path.join(_KEY_DIR, "checkpoint_key")
os.environ.pop("RAYSTREAM_UNSIGNED_CHECKPOINTS", None)
atexit.register(shutil.rmtree, _KEY_DIR, ignore_errors=True)
_signing.current(create=True)  # as `raystream run` would; tests open checkpoint stores directly

#: Fake secrets, distinctive so that a scan can tell whether they leaked anywhere.
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIARAYSTREAMTESTKEY0",
    "AWS_SECRET_ACCESS_KEY": "rs-test-secret-7f3a9c-must-not-leak",
    "RAYSTREAM_CHECKPOINT_KEY": "rs-test-hmac-key-c41d-must-not-leak",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3 API served by moto on 127.0.0.1 for this test session.

    The endpoint, fake credentials and a checkpoint signing key go into the environment
    before any Ray is started, so every Ray worker inherits them (nothing is passed in
    actor arguments) and every manifest of the session is signed and verified.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in _S3_ENV}
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1", **SECRETS})
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_S3_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", *SECRETS)


@pytest.fixture
def s3_bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> str:
    """A fresh bucket for one test."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def _shared_ray() -> Iterator[None]:
    """Shuts down, at the end of the session, the Ray that `ray_local` started."""
    yield
    import ray

    ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(s3_endpoint: str, _shared_ray: None) -> Iterator[None]:
    """A local Ray with 2 CPUs, started after the S3 endpoint is in the environment so
    that its workers inherit it, and shared by every module that asks for one: starting
    and stopping Ray per module cost about 4.5 s each, over 40 modules. A module that needs
    a Ray of its own (tests/cluster) shuts this one down first; the next module that asks
    starts it again."""
    import ray

    from raystream._runtime.control.connect import ensure_ray

    if not ray.is_initialized():
        ensure_ray(num_cpus=2)
    yield


@pytest.fixture
def in_tmp_dir(tmp_path, monkeypatch) -> None:
    """Default checkpoint storage (./raystream-checkpoints) lands in the test's own directory."""
    monkeypatch.chdir(tmp_path)


def _throwaway(server_class: str, env: str, prefix: str) -> Iterator[str]:
    """The server named in `env` (started by `.ci/run`), or one of `tests.helpers.servers.<server_class>`
    started under a temporary directory for this session and stopped at its end."""
    if os.environ.get(env):
        yield os.environ[env]
        return
    import shutil
    import tempfile
    from pathlib import Path

    from tests.helpers import servers

    directory = Path(tempfile.mkdtemp(prefix=prefix))
    server = getattr(servers, server_class)(directory)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The DSN of a PostgreSQL 15 server on 127.0.0.1 (RAYSTREAM_TEST_PG_DSN, or a throwaway cluster)."""
    yield from _throwaway("PostgresServer", "RAYSTREAM_TEST_PG_DSN", "raystream-pg-")


@pytest.fixture
def pg_dsn(postgres_server: str) -> Iterator[str]:
    """A new database for one test; at the end, no prepared transaction may be left in it
    (`ROLLBACK PREPARED` was not needed by anyone: the test fails if one is)."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    dsn = postgres_server.replace("dbname=postgres", f"dbname={name}")
    yield dsn
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        left = admin.execute("SELECT gid FROM pg_prepared_xacts WHERE database = %s", (name,)).fetchall()
    # The database stays (dropping one forces a checkpoint: seconds); the server is thrown away.
    assert not left, f"prepared transactions left behind: {left}"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """bootstrap.servers of a Kafka-protocol broker on 127.0.0.1 (Tansu, in memory):
    RAYSTREAM_TEST_KAFKA, or one for this session."""
    yield from _throwaway("KafkaBroker", "RAYSTREAM_TEST_KAFKA", "raystream-kafka-")
