"""An S3 edge for the simulation: an in-memory bucket behind the few boto3 client calls
raystream makes (objects, conditional puts, copies, multipart uploads with part copies).

Multipart uploads keep S3's rules that matter to FileSink's part files: completing an
upload assembles exactly the parts listed, in order, and ends the upload; parts not listed
are dropped; an upload that was completed or aborted is gone (NoSuchUpload). S3's 5 MiB
minimum part size is not enforced, so the simulation can roll tiny files.
"""
from __future__ import annotations

import hashlib
import io
import itertools
from typing import Any

from botocore.exceptions import ClientError


def _error(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, operation)


class _Pages:
    def __init__(self, fn):
        self._fn = fn

    def paginate(self, **kwargs: Any):
        yield self._fn(**kwargs)


class FakeS3Client:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.uploads: dict[str, dict[str, Any]] = {}  # upload id -> {"bucket", "key", "parts": {n: bytes}}
        self._ids = itertools.count(1)

    # --- objects -------------------------------------------------------------------------

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, IfNoneMatch: str | None = None) -> dict:
        if IfNoneMatch == "*" and (Bucket, Key) in self.objects:
            raise _error("PreconditionFailed", "PutObject")
        self.objects[(Bucket, Key)] = bytes(Body)
        return {"ETag": _etag(Body)}

    def get_object(self, *, Bucket: str, Key: str, Range: str | None = None) -> dict:
        data = self._get(Bucket, Key, "GetObject")
        if Range is not None:
            first, _, last = Range.split("=")[1].partition("-")
            data = data[int(first):int(last) + 1 if last else None]
        return {"Body": io.BytesIO(data), "ContentLength": len(data)}

    def head_object(self, *, Bucket: str, Key: str) -> dict:
        return {"ContentLength": len(self._get(Bucket, Key, "HeadObject"))}

    def _get(self, bucket: str, key: str, operation: str) -> bytes:
        try:
            return self.objects[(bucket, key)]
        except KeyError:
            raise _error("NoSuchKey" if operation == "GetObject" else "404", operation) from None

    def list_objects_v2(self, *, Bucket: str, Prefix: str = "", ContinuationToken: str | None = None) -> dict:
        keys = sorted(k for b, k in self.objects if b == Bucket and k.startswith(Prefix))
        return {"Contents": [{"Key": k} for k in keys], "IsTruncated": False}

    def delete_objects(self, *, Bucket: str, Delete: dict) -> dict:
        for obj in Delete["Objects"]:
            self.objects.pop((Bucket, obj["Key"]), None)
        return {}

    def delete_object(self, *, Bucket: str, Key: str) -> dict:
        self.objects.pop((Bucket, Key), None)
        return {}

    def copy_object(self, *, Bucket: str, Key: str, CopySource: dict) -> dict:
        self.objects[(Bucket, Key)] = self._get(CopySource["Bucket"], CopySource["Key"], "CopyObject")
        return {}

    # --- multipart uploads ---------------------------------------------------------------

    def create_multipart_upload(self, *, Bucket: str, Key: str) -> dict:
        upload_id = f"upload-{next(self._ids)}"
        self.uploads[upload_id] = {"bucket": Bucket, "key": Key, "parts": {}}
        return {"UploadId": upload_id}

    def _upload(self, upload_id: str, bucket: str, key: str, operation: str) -> dict[str, Any]:
        upload = self.uploads.get(upload_id)
        if upload is None or (upload["bucket"], upload["key"]) != (bucket, key):
            raise _error("NoSuchUpload", operation)
        return upload

    def upload_part(self, *, Bucket: str, Key: str, UploadId: str, PartNumber: int, Body: bytes) -> dict:
        self._upload(UploadId, Bucket, Key, "UploadPart")["parts"][PartNumber] = bytes(Body)
        return {"ETag": _etag(Body)}

    def upload_part_copy(self, *, Bucket: str, Key: str, UploadId: str, PartNumber: int, CopySource: dict,
                         CopySourceRange: str) -> dict:
        data = self._get(CopySource["Bucket"], CopySource["Key"], "UploadPartCopy")
        start, end = (int(x) for x in CopySourceRange.split("=")[1].split("-"))
        part = data[start:end + 1]
        self._upload(UploadId, Bucket, Key, "UploadPartCopy")["parts"][PartNumber] = part
        return {"CopyPartResult": {"ETag": _etag(part)}}

    def complete_multipart_upload(self, *, Bucket: str, Key: str, UploadId: str, MultipartUpload: dict) -> dict:
        upload = self._upload(UploadId, Bucket, Key, "CompleteMultipartUpload")
        chunks = []
        for part in MultipartUpload["Parts"]:
            data = upload["parts"].get(part["PartNumber"])
            if data is None or _etag(data) != part["ETag"]:
                raise _error("InvalidPart", "CompleteMultipartUpload")
            chunks.append(data)
        del self.uploads[UploadId]
        self.objects[(Bucket, Key)] = b"".join(chunks)
        return {}

    def abort_multipart_upload(self, *, Bucket: str, Key: str, UploadId: str) -> dict:
        self._upload(UploadId, Bucket, Key, "AbortMultipartUpload")
        del self.uploads[UploadId]
        return {}

    def list_multipart_uploads(self, *, Bucket: str, Prefix: str = "") -> dict:
        return {"Uploads": [{"Key": u["key"], "UploadId": i} for i, u in sorted(self.uploads.items())
                            if u["bucket"] == Bucket and u["key"].startswith(Prefix)]}

    def get_paginator(self, name: str) -> _Pages:
        return _Pages(getattr(self, name))


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'  # noqa: S324 - S3's ETag, not a security hash
