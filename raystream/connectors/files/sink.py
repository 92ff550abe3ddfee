"""FileSink: files of records in a local directory or under an S3 prefix, exactly once.
Its writers: connectors/files/rolling_writer.py (the default) and staged_writer.py
(`roll="checkpoint"`)."""
from __future__ import annotations

from typing import Any

from raystream import _files
from raystream.connectors.files.commits import FileTxn, json_lines  # noqa: F401 (rs.sinks names them from here)
from raystream.connectors.files.names import committed_checkpoint  # noqa: F401 (rs.sinks.committed_checkpoint)
from raystream.connectors.files.parquet_parts import parquet_bytes  # noqa: F401 (rs.sinks.parquet_bytes)
from raystream.connectors.files.reading import read_files  # noqa: F401 (its home in 0.2.0; rs.sinks.read_files)
from raystream.connectors.files.rolling_writer import RolledTxn, RollingWriter  # noqa: F401 (RolledTxn: public in 0.1)
from raystream.connectors.files.rows import FORMATS
from raystream.connectors.files.staged_writer import FileWriter
from raystream.errors import JobDefinitionError, SinkError
from raystream.sink_api import Sink, SinkContext, SinkWriter

#: FileSink's default rolling policy: a part file rolls at 128 MiB or after 60 s open.
DEFAULT_ROLL_SIZE = 128 * 1024 * 1024
DEFAULT_ROLL_INTERVAL = 60.0


class FileSink(Sink):
    """Files of records in a local directory or under an `s3://` prefix.

    Each file appears whole (atomic rename locally, one PUT or a completed multipart
    upload on S3). Under exactly-once, data of a checkpoint is first written as
    `_pending-...` files and renamed to `part-...` only when the checkpoint is complete,
    so a reader that lists the directory and ignores names starting with `_` or `.`
    (`read_files` and `read_table` do) sees committed output only.

    Every record is written as a row with named fields (`raystream.connectors.files.rows`):
    a dict as it is, a dataclass or NamedTuple by its fields, a `(key, value)` pair as
    `{"key": ..., "value": ...}`, anything else as `{"value": ...}`; so each JSON line is an
    object that `pyarrow.json`, pandas or Polars can read, and Parquet columns are named.

    By default each sink subtask keeps one part file open across checkpoints and rolls it
    (closes it, to be committed with the next checkpoint) once it holds `roll_size` bytes
    or has been open `roll_interval` seconds: 128 MiB or 60 s, so at most about 60 files
    an hour per sink subtask, each visible up to `roll_interval` plus one checkpoint
    interval after its first record. Either limit may be None (the other one rolls).
    `roll="checkpoint"` (or both limits None, how it was spelled before 0.5) commits one
    file per subtask and checkpoint instead, of at most `rows_per_file` rows: visible a
    checkpoint after they are written, but 3,600 files an hour per subtask at 1 s
    checkpoints. See `raystream.connectors.files.parts` (JSON lines) and
    `raystream.connectors.files.parquet_parts` (Parquet: the open part is kept as
    per-checkpoint segments, merged into one file when it rolls) for how the open part
    survives a crash.
    """

    def __init__(self, directory: str, *, format: str = "jsonl", rows_per_file: int = 500_000,
                 roll_size: int | None = DEFAULT_ROLL_SIZE, roll_interval: float | None = DEFAULT_ROLL_INTERVAL,
                 roll: str = "policy"):
        if not isinstance(directory, str) or not directory:
            raise JobDefinitionError(f"FileSink needs a directory path or s3:// URI; got {directory!r}")
        if format not in FORMATS:
            raise JobDefinitionError(f"FileSink format must be one of {', '.join(FORMATS)}; got {format!r}")
        if not isinstance(rows_per_file, int) or rows_per_file < 1:
            raise JobDefinitionError(f"FileSink rows_per_file must be an integer >= 1; got {rows_per_file!r}")
        # Resolved here, in the driver: actors may run in another working directory.
        self.directory = _files.Location.parse(directory).uri()
        self.format = format
        self.rows_per_file = rows_per_file
        if roll_size is not None and (not isinstance(roll_size, int) or isinstance(roll_size, bool) or roll_size < 1):
            raise JobDefinitionError(f"FileSink roll_size must be a number of bytes >= 1; got {roll_size!r}")
        if roll_interval is not None and (not isinstance(roll_interval, (int, float)) or isinstance(roll_interval, bool)
                                          or not roll_interval > 0):
            raise JobDefinitionError(f"FileSink roll_interval must be a number of seconds > 0; got {roll_interval!r}")
        if roll not in ("policy", "checkpoint"):
            raise JobDefinitionError(f"FileSink roll must be 'policy' (roll_size, roll_interval) or 'checkpoint' (one "
                                     f"file per subtask and checkpoint); got {roll!r}")
        if roll == "checkpoint" and (roll_size, roll_interval) != (DEFAULT_ROLL_SIZE, DEFAULT_ROLL_INTERVAL) \
                and (roll_size, roll_interval) != (None, None):
            raise JobDefinitionError("FileSink roll='checkpoint' commits a file at every checkpoint: drop "
                                     "roll_size and roll_interval, or leave roll out to roll by them")
        per_checkpoint = roll == "checkpoint" or (roll_size is None and roll_interval is None)
        self.roll_size = None if per_checkpoint else roll_size
        self.roll_interval = None if per_checkpoint else roll_interval

    def check(self, *, job_name: str, step_id: str, parallelism: int, exactly_once: bool, job: Any = None) -> None:
        """A local directory that cannot be made or written is refused before the job starts."""
        problem = _files.unwritable(self.directory)
        if problem is not None:
            raise SinkError(f"step {step_id!r}: FileSink cannot write {self.directory}: {problem}")

    @property
    def rolling(self) -> bool:
        """Whether part files roll by size or age (else one file per subtask and checkpoint)."""
        return bool(self.roll_size or self.roll_interval)

    def build_writer(self, context: SinkContext) -> SinkWriter:
        return RollingWriter(self, context) if self.rolling else FileWriter(self, context)

    def combine_writer_states(self, step_id: str, states: list[Any]) -> Any:
        """A rescaled rolling writer takes over the open part files of every old subtask."""
        parts = [p for state in states if state for p in state["in_progress"]]
        return {"in_progress": parts} if parts else None
