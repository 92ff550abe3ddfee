"""Signed records in a job's checkpoint storage: writing them, and reading them back
checked (docs/security.md): a record is signed (signing.py) and its size bounded before
it is read; a name in a listing that raystream did not write is skipped; a record that
does not verify counts as absent, with a warning."""
from __future__ import annotations

import logging
from typing import Any, Callable

from raystream._storage import Storage, open_storage
from raystream._runtime.state import signing
from raystream._runtime.state.signing import MAX_RECORD_BYTES, read_signed_json, signed_json
from raystream.errors import CheckpointKeyError, CorruptCheckpointError, StorageKeyError

logger = logging.getLogger(__name__)


class SignedRecords:
    """One job's checkpoint root and the signed records under it."""

    def __init__(self, root: str, storage: Storage | None = None):
        self.root = root
        self.storage: Storage = storage if storage is not None else open_storage(root, private=True)
        self._key = signing.current()  # read in this process; never stored or logged
        self.job = root.rstrip("/").rsplit("/", 1)[-1]  # every record names it: no record moves between jobs

    def _numbered(self, prefix: str, width: int) -> list[int]:
        """The numbers that the keys directly under `prefix` name, `width` digits as
        raystream writes them there; any other name is skipped: raystream did not write it."""
        numbers = []
        for key in self.storage.list(prefix):
            name = key[len(prefix):]
            if len(name) == width and name.isascii() and name.isdigit():
                numbers.append(int(name))
            else:
                logger.warning("skipped %s: not a name raystream writes there", self.storage.uri(key))
        return numbers

    def _exists(self, key: str) -> bool:
        return key in self.storage.list(key)

    def _read(self, key: str, limit: int) -> bytes:
        """An object no larger than `limit` (CorruptCheckpointError if it is)."""
        data = self.storage.get(key, limit=limit)
        if len(data) > limit:
            raise CorruptCheckpointError(f"{self.storage.uri(key)} is larger than {limit} bytes, more than raystream "
                                         "ever writes there; it is not read")
        return data

    def write_record(self, key: str, body: dict[str, Any]) -> None:
        """A signed JSON record at `key` (its body names its type, key, job and run)."""
        self.storage.put(key, signed_json(body, self._key))

    def read_record(self, key: str, kind: str) -> dict[str, Any]:
        """The body of the signed record of type `kind` at `key`, verified (docs/security.md)."""
        return read_signed_json(self._read(key, MAX_RECORD_BYTES), self._key, self.storage.uri(key), kind, key)

    def _record(self, key: str, kind: str, expected: dict[str, Any],
                legacy: Callable[[bytes], Any] | None = None) -> dict[str, Any] | None:
        """A signed record's body if it verifies as a `kind` record of `key` with the
        `expected` fields; else None, with a warning. With the opt-out, `legacy` reads
        what a raystream before signing wrote there."""
        what = f"record {self.storage.uri(key)}"
        expected = {**expected, "job": self.job}
        try:
            data = self._read(key, MAX_RECORD_BYTES)
        except FileNotFoundError:
            return None
        except (CorruptCheckpointError, StorageKeyError) as exc:
            logger.warning("%s ignored: %s", what, exc)
            return None
        try:
            body = read_signed_json(data, self._key, what, kind, key)
        except (CorruptCheckpointError, CheckpointKeyError) as exc:
            old = legacy(data) if legacy is not None and signing.unsigned() else None
            if old is not None:
                return {**expected, **old} if isinstance(old, dict) else dict(expected)
            logger.warning("%s ignored: %s", what, exc)
            return None
        body.setdefault("job", self.job)  # a record of the opt-out's legacy formats
        if any(body.get(name) != value for name, value in expected.items()):
            logger.warning("%s ignored: it belongs to %s, not %s", what,
                           {name: body.get(name) for name in expected}, expected)
            return None
        return body


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
