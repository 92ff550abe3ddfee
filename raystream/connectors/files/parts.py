"""Recoverable part files: FileSink's rolling policy keeps a part file open across
checkpoints and commits it once it is closed (rolled).

1. `write` appends to the open part: locally to a hidden `_inprogress-...` file; on S3
   to a buffer that is uploaded in parts of a multipart upload of the final key.
2. `persist`, at each checkpoint, makes what was written so far recoverable and returns
   the part's description for the checkpoint: locally the file is fsynced and its length
   recorded; on S3 every full part is uploaded, and the rest (below S3's 5 MiB minimum
   for all but the last part) is the tail, which travels in the description itself, so
   in the checkpoint's snapshot: it lives exactly as long as the checkpoint, and no
   restore of a retained checkpoint can miss it. The parts' numbers and ETags and the
   length are recorded.
3. `close` (the part rolled) makes the whole content recoverable for the commit: locally
   fsync; on S3 the rest is uploaded as the last part.
4. `commit_part` makes a recorded part visible under its final key, idempotently: locally
   it cuts the file back to the recorded length (data written after the checkpoint goes)
   and renames it; on S3 it uploads the tail, if any, as the last part and completes the
   upload with the recorded parts only (parts uploaded after the checkpoint are dropped).
   A part committed already is cut back to the recorded length if it is longer: that is
   a fall-back past a refused checkpoint that committed the part after more was written
   to it, and the records after the restored checkpoint are replayed into a new part
   (T4). One whose data is gone raises FileNotFoundError.
5. `adopt_part`: a part that *another run* recorded (the checkpoint a run started from)
   belongs to that run, which may still be writing it: it is never committed or cut
   here. Committed already, its records are visible; otherwise its recorded bytes are
   copied into a file of the new run (locally; an S3 upload in progress cannot be read,
   so a start from such a checkpoint is refused: start from a savepoint, whose parts are
   all committed).

Parquet parts keep the same steps with segments instead of appends (`parquet_parts.py`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

from raystream import _files
from raystream._storage import LocalStorage, S3Storage, Storage, fsync_dir, open_storage
from raystream.connectors.files.parquet_parts import ParquetPart, ParquetPartWriter, adopt_parquet_part, commit_parquet_part
from raystream.errors import RestoreError

logger = logging.getLogger(__name__)

#: S3 parts are uploaded at this size; every part but the last must be at least 5 MiB.
PART_SIZE = 8 * 1024 * 1024


@dataclass(frozen=True)
class LocalPart:
    """A local part file: staged name, final name and the length that counts."""

    staged: str
    final: str
    length: int
    directory: str = ""  # where it is (a run from a savepoint may write elsewhere): "" is the writer's


@dataclass(frozen=True)
class S3Part:
    """A multipart upload of the final key: its uploaded parts, and the bytes after them
    (the tail, below S3's minimum part size; None when there are none)."""

    final: str
    upload_id: str
    parts: tuple[tuple[int, str], ...]  # (part number, ETag)
    tail: bytes | None
    length: int
    directory: str = ""  # where it is (a run from a savepoint may write elsewhere): "" is the writer's


Part = LocalPart | S3Part | ParquetPart


class PartWriter:
    """One open part file (steps 1-3)."""

    def __init__(self, final: str, opened_at: float):
        self.final = final
        self.opened_at = opened_at
        self.size = 0

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def persist(self, checkpoint_id: int) -> Part:
        raise NotImplementedError

    def close(self) -> Part:
        raise NotImplementedError

    def covers(self, part: Part | None) -> bool:
        """Whether `part` (the last persisted description) holds every byte written."""
        return part is not None and part.length == self.size


class LocalPartWriter(PartWriter):
    def __init__(self, storage: LocalStorage, staged: str, final: str, opened_at: float):
        super().__init__(final, opened_at)
        self._storage, self._staged = storage, staged
        path = storage._path(staged)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Unbuffered: what `write` returns is in the file, not in this process's memory, so
        # no buffer is ever flushed behind the back of a restore that cut the file back.
        self._file = open(path, "ab", buffering=0)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a raw write may take less than all
            view = view[self._file.write(view):]
        self.size += len(data)

    def persist(self, checkpoint_id: int) -> LocalPart:
        os.fsync(self._file.fileno())
        return LocalPart(self._staged, self.final, self.size, self._storage.uri())

    def close(self) -> LocalPart:
        part = self.persist(0)
        self._file.close()
        fsync_dir(os.path.dirname(self._storage._path(self._staged)))
        return part


class S3PartWriter(PartWriter):
    def __init__(self, storage: S3Storage, final: str, opened_at: float):
        super().__init__(final, opened_at)
        self._storage = storage
        self._client = _files.s3_client()
        self._upload = self._client.create_multipart_upload(Bucket=storage.bucket, Key=storage._key(final))["UploadId"]
        self._parts: list[tuple[int, str]] = []
        self._buffer = bytearray()

    def write(self, data: bytes) -> None:
        self._buffer += data
        self.size += len(data)
        while len(self._buffer) >= PART_SIZE:
            self._upload_part(bytes(self._buffer[:PART_SIZE]))
            del self._buffer[:PART_SIZE]

    def _upload_part(self, data: bytes) -> None:
        number = len(self._parts) + 1
        etag = self._client.upload_part(Bucket=self._storage.bucket, Key=self._storage._key(self.final),
                                        UploadId=self._upload, PartNumber=number, Body=data)["ETag"]
        self._parts.append((number, etag))

    def persist(self, checkpoint_id: int) -> S3Part:
        return S3Part(self.final, self._upload, tuple(self._parts), bytes(self._buffer) or None, self.size,
                      self._storage.uri())

    def close(self) -> S3Part:
        if self._buffer or not self._parts:
            self._upload_part(bytes(self._buffer))
            self._buffer.clear()
        return S3Part(self.final, self._upload, tuple(self._parts), None, self.size, self._storage.uri())


def open_part(storage: Storage, staged: str, final: str, opened_at: float, *, format: str = "jsonl",
              rows_per_file: int = 500_000, where: str = "a Parquet part") -> PartWriter | ParquetPartWriter:
    """An open part: JSON lines appended (steps 1-3 above), or Parquet kept as segments
    (`parquet_parts.py`, `where` naming it in errors)."""
    if format == "parquet":
        return ParquetPartWriter(storage, staged, final, opened_at, rows_per_file, where)
    if isinstance(storage, S3Storage):
        return S3PartWriter(storage, final, opened_at)
    return LocalPartWriter(storage, staged, final, opened_at)  # type: ignore[arg-type]


def commit_part(storage: Storage, part: Part) -> None:
    """Step 4: make `part` visible as recorded; committed already is committed, cut back to
    the recorded length if it grew after the checkpoint that recorded it."""
    if isinstance(part, ParquetPart):
        commit_parquet_part(storage, part)
        return
    if isinstance(part, LocalPart):
        staged, final = storage._path(part.staged), storage._path(part.final)  # type: ignore[attr-defined]
        if os.path.exists(staged):
            if os.path.getsize(staged) > part.length:  # written after the checkpoint that recorded it
                os.truncate(staged, part.length)
            storage.promote([(part.staged, part.final)])
        elif os.path.exists(final):
            _cut_local(final, part.length, storage.uri(part.final))
        else:
            raise FileNotFoundError(2, "neither it nor its staged file exists", storage.uri(part.final))
        return
    _complete(storage, part)  # type: ignore[arg-type]


def storage_of(part: Part, default: Storage) -> Storage:
    """Where `part` is: the directory it recorded, else `default` (the writer's)."""
    return open_storage(part.directory) if part.directory and part.directory != default.uri() else default


def adopt_part(storage: Storage, part: Part, target: Storage, name: str) -> None:
    """Step 5: `part` of another run, in `storage`, as the checkpoint a new run starts from
    recorded it; `name`: the new run's file in `target` for a copy of its recorded bytes.
    Idempotent."""
    if isinstance(part, ParquetPart):
        adopt_parquet_part(storage, part, target, name)
        return
    if isinstance(part, LocalPart):
        final = storage._path(part.final)  # type: ignore[attr-defined]
        for _ in range(2):  # the other run may commit it meanwhile
            if os.path.exists(final):
                if os.path.getsize(final) < part.length:
                    raise FileNotFoundError(2, f"it is shorter than the {part.length} bytes recorded", storage.uri(part.final))
                return
            if target.list(name):
                return  # copied before
            try:
                with open(storage._path(part.staged), "rb") as f:  # type: ignore[attr-defined]
                    data = f.read(part.length)
            except FileNotFoundError:
                continue
            if len(data) < part.length:
                raise FileNotFoundError(2, f"it holds {len(data)} of the {part.length} bytes recorded",
                                        storage.uri(part.staged))
            target.put(name, data)
            return
        raise FileNotFoundError(2, "neither it nor its staged file exists", storage.uri(part.final))
    from botocore.exceptions import ClientError

    try:
        size = _files.s3_client().head_object(Bucket=storage.bucket, Key=storage._key(part.final))["ContentLength"]  # type: ignore[attr-defined]
    except ClientError:
        raise RestoreError(
            f"FileSink: the checkpoint this run starts from had {storage.uri(part.final)} open, an S3 upload of "
            "the run that took it, which that run may still be writing and whose parts cannot be read: start from "
            "a savepoint of that run (stop it with a savepoint), whose files are all committed") from None
    if size < part.length:
        raise FileNotFoundError(2, f"it holds {size} of the {part.length} bytes recorded", storage.uri(part.final))


def _cut_local(path: str, length: int, uri: str) -> None:
    size = os.path.getsize(path)
    if size < length:
        raise FileNotFoundError(2, f"it holds {size} bytes where the checkpoint recorded {length}", uri)
    if size > length:
        with open(path, "r+b") as f:
            f.truncate(length)
            os.fsync(f.fileno())
        logger.info("cut %s back to the %d bytes its restored checkpoint recorded (it had %d)", uri, length, size)


def _complete(storage: S3Storage, part: S3Part) -> None:
    from botocore.exceptions import ClientError

    client, key = _files.s3_client(), storage._key(part.final)
    if not _upload_exists(client, storage.bucket, key, part.upload_id):
        try:  # completed before
            size = client.head_object(Bucket=storage.bucket, Key=key)["ContentLength"]
        except ClientError:
            raise FileNotFoundError(2, "neither its upload nor the object exists", storage.uri(part.final)) from None
        if size < part.length:
            raise FileNotFoundError(2, f"it holds {size} bytes where the checkpoint recorded {part.length}",
                                    storage.uri(part.final))
        if size > part.length:
            _cut_s3(client, storage.bucket, key, part.length)
            logger.info("cut %s back to the %d bytes its restored checkpoint recorded (it had %d)",
                        storage.uri(part.final), part.length, size)
        return
    parts = list(part.parts)
    if part.tail is not None:
        etag = client.upload_part(Bucket=storage.bucket, Key=key, UploadId=part.upload_id,
                                  PartNumber=len(parts) + 1, Body=part.tail)["ETag"]
        parts.append((len(parts) + 1, etag))
    client.complete_multipart_upload(Bucket=storage.bucket, Key=key, UploadId=part.upload_id,
                                     MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]})


#: A cut-back copies the object's first bytes in parts of this size (S3 allows 5 GiB).
_COPY_PART = 1024 * 1024 * 1024


def _cut_s3(client: Any, bucket: str, key: str, length: int) -> None:
    """Replace the object `key` by its first `length` bytes (> 0), copied inside S3: a
    multipart upload of byte ranges of itself, which replaces it atomically."""
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    try:
        parts = []
        for number, start in enumerate(range(0, length, _COPY_PART), 1):
            end = min(start + _COPY_PART, length) - 1
            copied = client.upload_part_copy(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number,
                                             CopySource={"Bucket": bucket, "Key": key},
                                             CopySourceRange=f"bytes={start}-{end}")
            parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
        client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
    except BaseException:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
        raise


def _upload_exists(client: Any, bucket: str, key: str, upload_id: str) -> bool:
    pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=key)
    return any(u["UploadId"] == upload_id and u["Key"] == key for page in pages for u in page.get("Uploads", []))


def abort_uploads(storage: Storage, prefix: str, keep: set[str], stale: Callable[[str], bool]) -> int:
    """S3: abort the multipart uploads of keys under `prefix` that are not in `keep` and
    for which `stale(key)` holds; returns how many. Nothing to do locally."""
    if not isinstance(storage, S3Storage):
        return 0
    client, aborted = _files.s3_client(), 0
    cut = len(storage.prefix) + 1 if storage.prefix else 0
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=storage.bucket,
                                                                        Prefix=storage._key(prefix)):
        for upload in page.get("Uploads", []):
            key = upload["Key"][cut:]
            if key not in keep and stale(key):
                client.abort_multipart_upload(Bucket=storage.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted += 1
    return aborted
