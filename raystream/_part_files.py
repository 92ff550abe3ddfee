"""Recoverable part files: FileSink's rolling policy keeps a part file open across
checkpoints and commits it once it is closed (rolled).

1. `write` appends to the open part: locally to a hidden `_inprogress-...` file; on S3
   to a buffer that is uploaded in parts of a multipart upload of the final key.
2. `persist`, at each checkpoint, makes what was written so far recoverable and returns
   the part's description for the checkpoint: locally the file is fsynced and its length
   recorded; on S3 every full part is uploaded, and the rest (below S3's 5 MiB minimum
   for all but the last part) goes into a small tail object. The parts' numbers and
   ETags and the tail's key are recorded.
3. `close` (the part rolled) makes the whole content recoverable for the commit: locally
   fsync; on S3 the rest is uploaded as the last part.
4. `commit_part` makes a recorded part visible under its final key, idempotently: locally
   it cuts the file back to the recorded length (data written after the checkpoint goes)
   and renames it; on S3 it uploads the tail, if any, as the last part and completes the
   upload with the recorded parts only (parts uploaded after the checkpoint are dropped).
   A part already committed is done; one whose data is gone raises FileNotFoundError.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

from raystream import _files
from raystream._storage import LocalStorage, S3Storage, Storage, fsync_dir

logger = logging.getLogger(__name__)

#: S3 parts are uploaded at this size; every part but the last must be at least 5 MiB.
PART_SIZE = 8 * 1024 * 1024


@dataclass(frozen=True)
class LocalPart:
    """A local part file: staged name, final name and the length that counts."""

    staged: str
    final: str
    length: int


@dataclass(frozen=True)
class S3Part:
    """A multipart upload of the final key: its uploaded parts, and the tail object that
    holds the rest (None when there is none)."""

    final: str
    upload_id: str
    parts: tuple[tuple[int, str], ...]  # (part number, ETag)
    tail: str | None
    length: int


Part = LocalPart | S3Part


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


class LocalPartWriter(PartWriter):
    def __init__(self, storage: LocalStorage, staged: str, final: str, opened_at: float):
        super().__init__(final, opened_at)
        self._storage, self._staged = storage, staged
        path = storage._path(staged)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._file = open(path, "ab")

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.size += len(data)

    def persist(self, checkpoint_id: int) -> LocalPart:
        self._file.flush()
        os.fsync(self._file.fileno())
        return LocalPart(self._staged, self.final, self.size)

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
        tail = None
        if self._buffer:
            tail = f"_tail-{self.final}-{checkpoint_id:012d}"
            self._storage.put(tail, bytes(self._buffer))
        return S3Part(self.final, self._upload, tuple(self._parts), tail, self.size)

    def close(self) -> S3Part:
        if self._buffer or not self._parts:
            self._upload_part(bytes(self._buffer))
            self._buffer.clear()
        return S3Part(self.final, self._upload, tuple(self._parts), None, self.size)


def open_part(storage: Storage, staged: str, final: str, opened_at: float) -> PartWriter:
    if isinstance(storage, S3Storage):
        return S3PartWriter(storage, final, opened_at)
    return LocalPartWriter(storage, staged, final, opened_at)  # type: ignore[arg-type]


def commit_part(storage: Storage, part: Part) -> None:
    """Step 4: make `part` visible as recorded; done already is done."""
    if isinstance(part, LocalPart):
        path = storage._path(part.staged)  # type: ignore[attr-defined]
        try:
            if os.path.getsize(path) > part.length:  # written after the checkpoint that recorded it
                os.truncate(path, part.length)
        except FileNotFoundError:
            pass  # promote tells committed from gone
        storage.promote([(part.staged, part.final)])
        return
    _complete(storage, part)  # type: ignore[arg-type]


def _complete(storage: S3Storage, part: S3Part) -> None:
    from botocore.exceptions import ClientError

    client, key = _files.s3_client(), storage._key(part.final)
    if not _upload_exists(client, storage.bucket, key, part.upload_id):
        try:  # completed before (its tails deleted since): done
            client.head_object(Bucket=storage.bucket, Key=key)
        except ClientError:
            raise FileNotFoundError(2, "neither its upload nor the object exists", storage.uri(part.final)) from None
        storage.delete(storage.list(f"_tail-{part.final}-"))
        return
    parts = list(part.parts)
    if part.tail is not None:
        etag = client.upload_part(Bucket=storage.bucket, Key=key, UploadId=part.upload_id,
                                  PartNumber=len(parts) + 1, Body=storage.get(part.tail))["ETag"]
        parts.append((len(parts) + 1, etag))
    client.complete_multipart_upload(Bucket=storage.bucket, Key=key, UploadId=part.upload_id,
                                     MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]})
    storage.delete(storage.list(f"_tail-{part.final}-"))


def _upload_exists(client: Any, bucket: str, key: str, upload_id: str) -> bool:
    pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=key)
    return any(u["UploadId"] == upload_id and u["Key"] == key for page in pages for u in page.get("Uploads", []))


def delete_tails(storage: Storage, final: str, before: int) -> None:
    """Tails of `final` recorded before checkpoint `before`: a restore needs the newest only."""
    old = [k for k in storage.list(f"_tail-{final}-") if int(k.rsplit("-", 1)[1]) < before]
    storage.delete(old)


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
