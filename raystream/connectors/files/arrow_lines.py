"""Lines of a text file as Arrow record batches (`FileSource(..., columnar=True)`): the
file is split into lines by Arrow, not line by line in Python, and a batch of up to
`arrow_batch_size` lines crosses to the next subtask as Arrow buffers.

The offset is the one the per-line reader keeps, (byte position, line number) after the
last line emitted, and lines are cut the same way (at LF; one CR before it is dropped;
the last line may lack its LF), so a savepoint taken with either reader resumes with the
other."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from raystream import _files
from raystream.errors import SourceError
from raystream.source_api import SourcePartition

_CHUNK = 4 * 1024 * 1024  # bytes read at a time: tens of thousands of lines of text
SCHEMA = pa.schema([pa.field("line", pa.string())])


class ArrowLinePartition(SourcePartition):
    """One text file; emits at most `batch_size` lines a batch, as a "line" column."""

    def __init__(self, uri: str, offset: tuple[int, int], batch_size: int):
        self._uri, self._batch_size = uri, batch_size
        self._pos, self._line = offset
        self._reader = _files.open_read(uri, self._pos)
        self._carry = b""  # the start of a line whose LF has not been read yet
        self._eof = False
        self._lines: pa.Array = pa.array([], pa.binary())  # read, not emitted; without their LF
        self._unterminated = False  # the last of `_lines` ended the file without an LF

    def _fill(self) -> bool:
        """Read until `batch_size` lines are pending or the file ends; False when none are."""
        while len(self._lines) < self._batch_size and not self._eof:
            data = self._reader.read(_CHUNK)
            if not data:
                self._eof = True
                if self._carry:  # the last line, without a "\n"
                    self._append(pa.array([self._carry], pa.binary()))
                    self._carry, self._unterminated = b"", True
                continue
            data = self._carry + data
            cut = data.rfind(b"\n")
            if cut < 0:  # a line longer than a chunk: keep reading
                self._carry = data
                continue
            self._append(pc.split_pattern(pa.array([data[:cut]], pa.binary()), pattern=b"\n").flatten())
            self._carry = data[cut + 1:]
        return len(self._lines) > 0

    def _append(self, lines: pa.Array) -> None:
        self._lines = pa.concat_arrays([self._lines, lines]) if len(self._lines) else lines

    def next_batch(self) -> pa.RecordBatch | None:
        if not self._fill():
            return None
        n = min(self._batch_size, len(self._lines))
        raw, self._lines = self._lines.slice(0, n), self._lines.slice(n)
        ends_file = self._unterminated and len(self._lines) == 0
        lines = self._decode(raw)
        # the bytes of these lines in the file: each line and its LF (the file's last line may have none)
        self._pos += (pc.sum(pc.binary_length(raw)).as_py() or 0) + n - (1 if ends_file else 0)
        self._line += n
        return pa.RecordBatch.from_arrays([lines], schema=SCHEMA)

    def _decode(self, raw: pa.Array) -> pa.Array:
        try:
            lines = raw.cast(pa.string())  # checks that every line is UTF-8
        except pa.ArrowInvalid:
            for i, line in enumerate(raw.to_pylist()):  # name the line, as the per-line reader does
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise SourceError(f"{self._uri}:{self._line + 1 + i}: not valid UTF-8 ({exc.reason})") from None
            raise
        if pc.any(pc.ends_with(lines, pattern="\r")).as_py():  # CRLF files: drop the CR, as the per-line reader does
            lines = pc.replace_substring_regex(lines, pattern="\r$", replacement="", max_replacements=1)
        return lines

    def snapshot(self) -> tuple[int, int]:
        return (self._pos, self._line)

    def close(self) -> None:
        self._reader.close()
