"""Lines of a text file as Arrow record batches (`FileSource(..., columnar=True)`): the
file is split into lines by Arrow, not line by line in Python, and a batch of up to
`arrow_batch_size` lines crosses to the next subtask as Arrow buffers.

The offset is the one the per-line reader keeps, (byte position, line number) after the
last line emitted, and lines are cut the same way (at LF; one CR before it is dropped;
the last line may lack its LF), so a savepoint taken with either reader resumes with the
other."""
from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream import _files
from raystream.errors import SourceError
from raystream.source_api import SourcePartition

_CHUNK = 4 * 1024 * 1024  # bytes read at a time: tens of thousands of lines of text
# A batch of long lines ends sooner: one string column holds at most 2 GiB, a batch is a
# message between processes, and no barrier passes while one is made (C1).
MAX_BATCH_BYTES = 16 * 1024 * 1024
SCHEMA = pa.schema([pa.field("line", pa.string())])


@dataclass
class _Piece:
    """Lines of one chunk not emitted yet, without their LFs; `unterminated`: the last one
    ended the file without an LF."""

    lines: pa.Array  # binary
    unterminated: bool = False

    def ends(self) -> np.ndarray:
        """Where each line ends, in bytes from the piece's first line (without LFs)."""
        offsets = np.frombuffer(self.lines.buffers()[1], np.int32, len(self.lines) + 1, self.lines.offset * 4)
        return offsets[1:] - offsets[0]


class ArrowLinePartition(SourcePartition):
    """One text file; emits at most `batch_size` lines (and about MAX_BATCH_BYTES) a batch,
    as a "line" column."""

    def __init__(self, uri: str, offset: tuple[int, int], batch_size: int):
        self._uri, self._batch_size = uri, batch_size
        self._pos, self._line = offset
        self._reader = _files.open_read(uri, self._pos)
        self._carry = bytearray()  # the start of a line whose LF has not been read yet
        self._eof = False
        self._pieces: collections.deque[_Piece] = collections.deque()
        self._pending = 0  # lines in _pieces
        self._pending_bytes = 0

    def _fill(self) -> bool:
        """Read until a batch's lines (or bytes) are pending or the file ends; False when none are."""
        while self._pending < self._batch_size and self._pending_bytes < MAX_BATCH_BYTES and not self._eof:
            data = self._reader.read(_CHUNK)
            if not data:
                self._eof = True
                if self._carry:  # the last line, without a "\n"
                    self._add(_Piece(pa.array([bytes(self._carry)], pa.binary()), unterminated=True))
                    self._carry = bytearray()
                continue
            cut = data.rfind(b"\n")
            if cut < 0:  # no line ends in this chunk: keep reading
                self._carry += data
                continue
            head = bytes(self._carry) + data[:cut] if self._carry else data[:cut]
            self._add(_Piece(pc.split_pattern(pa.array([head], pa.binary()), pattern=b"\n").flatten()))
            self._carry = bytearray(data[cut + 1:])
        return self._pending > 0

    def _add(self, piece: _Piece) -> None:
        self._pieces.append(piece)
        self._pending += len(piece.lines)
        self._pending_bytes += int(piece.ends()[-1])

    def next_batch(self) -> pa.RecordBatch | None:
        if not self._fill():
            return None
        taken: list[pa.Array] = []
        n = size = 0
        lf = 0  # LFs of the lines taken: one each, but for an unterminated last line
        while self._pieces and n < self._batch_size and size < MAX_BATCH_BYTES:
            piece = self._pieces[0]
            ends = piece.ends()
            k = min(len(ends), self._batch_size - n)
            # lines up to the byte budget (at least one, however long)
            k = max(1, min(k, int(np.searchsorted(ends, MAX_BATCH_BYTES - size, side="right"))))
            taken.append(piece.lines.slice(0, k))
            size += int(ends[k - 1])
            lf += k - (1 if piece.unterminated and k == len(ends) else 0)
            n += k
            if k == len(ends):
                self._pieces.popleft()
            else:
                piece.lines = piece.lines.slice(k)
        self._pending -= n
        self._pending_bytes -= size
        # one compact array: a slice would carry its whole chunk's buffers to the next process
        lines = self._decode(pa.concat_arrays(taken))
        self._pos += size + lf
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
