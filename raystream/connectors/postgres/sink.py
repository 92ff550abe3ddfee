"""PostgresSink: rows into a PostgreSQL table, exactly once, with two-phase commit.

Each sink subtask keeps one open transaction for the records since its last barrier and
writes them as they come (COPY in append mode, `INSERT ... ON CONFLICT` in upsert mode).
The sink protocol (docs/protocol.md, T1-T4) runs as:

1. T1 at a barrier: `PREPARE TRANSACTION '<gid>'`. The gid names job, step, subtask, run,
   attempt and checkpoint. The prepared transaction survives crashes of the subtask and
   of the server, and stays invisible. Its gid and transaction id go into the checkpoint.
2. T3 once the checkpoint is complete: `COMMIT PREPARED '<gid>'`. When no transaction
   has that gid any more, `pg_xact_status` of its transaction id tells whether it was
   committed (done already) or rolled back (`StagedDataMissingError`).
3. C6a, upsert: a transaction of an aborted checkpoint is rolled back before the next
   barrier, and its rows go into the open transaction (`abort`); no write ever waits for
   a row lock of the subtask's own (see PostgresWriter).
4. T4 on restore: commit the restored checkpoint's transactions as in 2; then roll back
   every other prepared transaction of this job, step and run that this subtask owns
   (found in `pg_prepared_xacts`), except those of this attempt or a later one. Another
   run's prepared transactions are never touched.

Under at-least-once the transaction commits at each barrier; upsert mode makes the
replayed rows idempotent. What the sink cannot do is retract committed rows: see
`SinkWriter.recover` for the one case (a refused newer checkpoint) where that matters.

Credentials: the DSN names host, port, database, user and TLS files, only parameters
known to carry no secret (`DSN_PARAMETERS`), because the sink travels to every subtask
in actor arguments. The password comes from PGPASSWORD or a password file (PGPASSFILE,
~/.pgpass) on the nodes; a client key's passphrase (sslpassword, which libpq reads from
no environment variable) from a service file on the nodes (PGSERVICEFILE, service=), or
the key file is left unencrypted and readable by its owner only. Logs and errors name
host, port and database only.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

from raystream.config import CheckpointConfig
from raystream.errors import JobDefinitionError
from raystream.retry import Retry
from raystream.sink_api import Sink, SinkContext, SinkWriter

try:  # optional: pip install "raystream[postgres]"
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from raystream.connectors.postgres.tables import address, check_server
    from raystream.connectors.postgres.writer import PostgresWriter
except ImportError:  # reported when a PostgresSink is made
    psycopg = None  # type: ignore[assignment]

_MODES = ("append", "upsert")
# The libpq connection parameters a PostgresSink's DSN may hold: those known to carry no
# secret (files by their path on the nodes). Refused: password, sslpassword,
# oauth_client_secret, scram_client_key, scram_server_key, and what the sink has no use
# for (replication, sslkeylogfile: TLS session secrets written to a file).
DSN_PARAMETERS = frozenset({
    "host", "hostaddr", "port", "dbname", "user", "service", "passfile", "connect_timeout", "client_encoding",
    "options", "application_name", "fallback_application_name", "keepalives", "keepalives_idle",
    "keepalives_interval", "keepalives_count", "tcp_user_timeout", "target_session_attrs", "load_balance_hosts",
    "sslmode", "sslnegotiation", "sslcompression", "sslcert", "sslkey", "sslcertmode", "sslrootcert", "sslcrl",
    "sslcrldir", "sslsni", "ssl_min_protocol_version", "ssl_max_protocol_version", "min_protocol_version",
    "max_protocol_version", "requirepeer", "require_auth", "channel_binding", "gssencmode", "krbsrvname", "gsslib",
    "gssdelegation", "oauth_issuer", "oauth_client_id", "oauth_scope",
})
_SECRETS = ("password", "sslpassword", "oauth_client_secret", "scram_client_key", "scram_server_key")


def _parse_error(exc: Exception) -> str:
    """libpq's message on a DSN it cannot parse, with the parts of the DSN it quotes
    hidden (`invalid percent-encoded token: "<a password>"`) unless they name a parameter."""
    message = str(exc).strip()
    if message.startswith(("invalid connection option", "invalid URI query parameter")):
        return message  # quotes what stands before "=": a name, not a value

    def keep(quoted: re.Match) -> str:
        return quoted.group(0) if quoted.group(1) in DSN_PARAMETERS or quoted.group(1) in _SECRETS + ("=",) else '"…"'
    return re.sub(r'"([^"]*)"', keep, message)


def _check_dsn(params: dict[str, Any]) -> None:
    """Refuses parameters not known to carry no secret, naming them (never their values)."""
    secret = sorted(k for k in params if k in _SECRETS and params[k])  # empty: libpq looks elsewhere
    if secret:
        raise JobDefinitionError(
            f"PostgresSink dsn must not hold secrets ({', '.join(secret)}): the sink travels to every subtask in actor "
            "arguments. Give the password in PGPASSWORD or a password file (PGPASSFILE, ~/.pgpass) on the nodes; "
            "libpq reads sslpassword from no environment variable: leave the key file (sslkey) unencrypted and "
            "readable by its owner only, or put the secrets in a service file on the nodes (PGSERVICEFILE, "
            "~/.pg_service.conf) and name it with service=")
    unknown = sorted(k for k in params if k not in DSN_PARAMETERS and k not in _SECRETS)
    if unknown:
        raise JobDefinitionError(
            f"PostgresSink dsn has parameters not known to be free of secrets ({', '.join(unknown)}): it takes only "
            "those in raystream.connectors.postgres.sink.DSN_PARAMETERS (host, port, dbname, user, sslmode, sslcert, sslkey, "
            "service, ...); give the others in a service file on the nodes (PGSERVICEFILE, service=)")


class PostgresSink(Sink):
    """Rows into PostgreSQL table `table`, exactly once (two-phase commit).

    - `dsn`: a libpq connection string or URI with parameters that carry no secret
      (`DSN_PARAMETERS`): no password (PGPASSWORD or a password file gives it), no
      sslpassword (a service file gives it); unset parts come from the PG* environment
      variables of the node.
    - `mode`: "append" inserts every record (COPY); "upsert" inserts or updates by `key`
      (a column or tuple of columns with a unique index on exactly them).
    - Records are dicts (keys are columns), tuples or lists (named by `columns`), or
      Arrow record batches (column names). `columns` also picks and orders dict fields.
    - `create_table`: create a missing table from the first batch's types (with a
      primary key on `key` in upsert mode).
    - `retry`: how connecting and committing retry a transient failure.

    Under exactly-once each sink subtask holds up to `tolerable_failures` + 2 prepared
    transactions at once (those of aborted checkpoints, committed with the next complete
    one; the one in flight; the previous one until its commit arrives). The server's
    `max_prepared_transactions` must cover that for every PostgresSink of the job on it;
    the job says so before it starts.
    """

    def __init__(self, dsn: str, table: str, *, mode: str = "append", key: str | Iterable[str] | None = None,
                 columns: Iterable[str] | None = None, create_table: bool = False, retry: Retry = Retry()):
        if psycopg is None:
            raise JobDefinitionError('PostgresSink needs psycopg 3: pip install "raystream[postgres]"')
        if not isinstance(dsn, str):
            raise JobDefinitionError(f"PostgresSink dsn must be a connection string or URI; got {type(dsn).__name__}")
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise JobDefinitionError(
                f"PostgresSink dsn is not a valid connection string: {_parse_error(exc)}") from None
        _check_dsn(params)
        if not isinstance(table, str) or not table or len(table.split(".")) > 2:
            raise JobDefinitionError(f"PostgresSink table must be 'name' or 'schema.name'; got {table!r}")
        if mode not in _MODES:
            raise JobDefinitionError(f"PostgresSink mode must be one of {', '.join(_MODES)}; got {mode!r}")
        keys = (key,) if isinstance(key, str) else tuple(key or ())
        if mode == "upsert" and not keys:
            raise JobDefinitionError("PostgresSink mode='upsert' needs key=: the column(s) of a unique index")
        if mode == "append" and keys:
            raise JobDefinitionError("PostgresSink key= is for mode='upsert'; append mode inserts every record")
        cols = tuple(columns) if columns is not None else None
        if cols is not None and (not cols or not all(isinstance(c, str) and c for c in cols)):
            raise JobDefinitionError(f"PostgresSink columns must be non-empty column names; got {columns!r}")
        if cols is not None and not set(keys) <= set(cols):
            raise JobDefinitionError(f"PostgresSink key {list(keys)} must be among columns {list(cols)}")
        if not isinstance(retry, Retry):
            raise JobDefinitionError(f"PostgresSink retry must be a raystream.Retry; got {retry!r}")
        self.dsn = dsn
        self.table = table
        self.mode = mode
        self.key = keys
        self.columns = cols
        self.create_table = bool(create_table)
        self.retry = retry

    def __repr__(self) -> str:
        return f"PostgresSink({address(self.dsn)!r}, {self.table!r}, mode={self.mode!r})"

    def build_writer(self, context: SinkContext) -> SinkWriter:
        return PostgresWriter(self, context)


    def check(self, *, job_name: str, step_id: str, parallelism: int, exactly_once: bool, job: Any = None) -> None:
        check_server(self, step_id=step_id, need=prepared_at_once(self, parallelism, job) if exactly_once else 0)


def prepared_at_once(sink: PostgresSink, parallelism: int, job: Any) -> int:
    """How many prepared transactions the job can hold at once on `sink`'s server: for
    every exactly-once PostgresSink of the job there, tolerable_failures + 2 per writer
    (`sink` alone, at `parallelism`, when the job is not known). A sink step has a
    writer per subtask; a dead-letter sink has one per subtask of every chain."""
    tolerable = (job.checkpoint if job is not None else CheckpointConfig()).tolerable_failures
    if job is None:
        return parallelism * (tolerable + 2)
    server = address(sink.dsn).split("/", 1)[0]

    def here(other: Any) -> bool:
        return isinstance(other, PostgresSink) and address(other.dsn).split("/", 1)[0] == server

    writers = sum(job.parallelism_of(step) for step in job.steps if here(step.sink))
    if job.errors.mode == "dead_letter" and here(job.errors.sink):
        from raystream._runtime.plan.physical import build_plan  # the chains: loaded when a job starts

        writers += sum(chain.parallelism for chain in build_plan(job, {}).chains)
    return writers * (tolerable + 2)
