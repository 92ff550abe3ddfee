"""Reading, writing and listing files by URI: local paths, file:// and s3:// (boto3).

S3 endpoints and credentials come from the environment (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, ...) as boto3 reads them, so none ever travels in actor arguments.
"""
from __future__ import annotations

import fnmatch
import glob
import io
import logging
import os
import threading
from dataclasses import dataclass
from typing import BinaryIO

logger = logging.getLogger(__name__)

_clients = threading.local()
_client_hook = None  # fault injection for tests (raystream.testing.faults.S3Faults)


def set_client_hook(hook) -> None:
    """Call `hook(client)` on every S3 client made from now on in this process."""
    global _client_hook
    _client_hook = hook


def s3_client():
    """One boto3 S3 client per thread, configured from the environment; transient errors
    (throttling, 5xx, dropped connections) are retried with backoff."""
    client = getattr(_clients, "s3", None)
    if client is None:
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", config=Config(retries={"max_attempts": 5, "mode": "standard"}))
        if _client_hook is not None:
            _client_hook(client)
        _clients.s3 = client
    return client


@dataclass(frozen=True)
class Location:
    """A parsed URI: `scheme` is "file" or "s3"; for s3 `bucket` and `key` are set."""

    scheme: str
    path: str  # local path, or the S3 key
    bucket: str = ""

    @staticmethod
    def parse(uri: str) -> "Location":
        if uri.startswith("s3://"):
            bucket, _, key = uri[len("s3://"):].partition("/")
            return Location("s3", key, bucket)
        if uri.startswith("file://"):
            uri = uri[len("file://"):]
        return Location("file", os.path.abspath(os.path.expanduser(uri)))

    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.path}" if self.scheme == "s3" else self.path

    def join(self, name: str) -> "Location":
        if self.scheme == "s3":
            base = self.path.rstrip("/")
            return Location("s3", f"{base}/{name}" if base else name, self.bucket)
        return Location("file", os.path.join(self.path, name))


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _visible(name: str) -> bool:
    """Whether a reader sees a file: names starting with `_` or `.` are staged or temporary
    (FileSink's `_pending-` files, partial writes) and are never read through a glob or
    a directory."""
    return not name.rsplit("/", 1)[-1].startswith(("_", "."))


def expand(uri: str) -> list[str]:
    """The URIs of the files that `uri` (a path, a glob, or a directory) names, sorted.
    Globs and directories leave out names starting with `_` or `.`."""
    loc = Location.parse(uri)
    if loc.scheme == "file":
        if _has_glob(loc.path):
            return sorted(p for p in glob.glob(loc.path) if os.path.isfile(p) and _visible(p))
        if os.path.isdir(loc.path):
            return sorted(
                os.path.join(loc.path, n)
                for n in os.listdir(loc.path)
                if not n.startswith(("_", ".")) and os.path.isfile(os.path.join(loc.path, n))
            )
        return [loc.path] if os.path.isfile(loc.path) else []
    # S3: list under the longest prefix without glob characters, then match.
    prefix = loc.path
    for i, ch in enumerate(prefix):
        if ch in "*?[":
            prefix = prefix[:i]
            break
    keys = list_keys(Location("s3", prefix, loc.bucket))
    if _has_glob(loc.path):
        keys = [k for k in keys if fnmatch.fnmatchcase(k, loc.path) and _visible(k)]
    elif loc.path in keys:
        keys = [loc.path]
    else:  # a "directory": direct children that a reader should see
        base = loc.path.rstrip("/") + "/"
        keys = [k for k in keys if k.startswith(base) and "/" not in k[len(base):]
                and not k[len(base):].startswith(("_", "."))]
    return sorted(f"s3://{loc.bucket}/{k}" for k in keys)


def list_keys(loc: Location) -> list[str]:
    """All S3 keys under the prefix `loc.path`."""
    client = s3_client()
    keys: list[str] = []
    token = None
    while True:
        kwargs = {"Bucket": loc.bucket, "Prefix": loc.path}
        if token:
            kwargs["ContinuationToken"] = token
        resp = client.list_objects_v2(**kwargs)
        keys.extend(obj["Key"] for obj in resp.get("Contents", []))
        if not resp.get("IsTruncated"):
            return keys
        token = resp["NextContinuationToken"]


def open_read(uri: str, offset: int = 0, *, seekable: bool = False) -> BinaryIO:
    """A binary reader of `uri` positioned at byte `offset`."""
    loc = Location.parse(uri)
    if loc.scheme == "file":
        f = open(loc.path, "rb")
        f.seek(offset)
        return f
    client = s3_client()
    if seekable:
        data = client.get_object(Bucket=loc.bucket, Key=loc.path)["Body"].read()
        buf = io.BytesIO(data)
        buf.seek(offset)
        return buf
    size = client.head_object(Bucket=loc.bucket, Key=loc.path)["ContentLength"]
    if offset >= size:
        return io.BytesIO(b"")
    return client.get_object(Bucket=loc.bucket, Key=loc.path, Range=f"bytes={offset}-")["Body"]


def read_bytes(loc: Location) -> bytes:
    if loc.scheme == "s3":
        return s3_client().get_object(Bucket=loc.bucket, Key=loc.path)["Body"].read()
    with open(loc.path, "rb") as f:
        return f.read()


def unwritable(uri: str) -> str | None:
    """Why files cannot be written under the local directory `uri` (made if missing), or
    None; None for S3, whose permissions only a write shows."""
    loc = Location.parse(uri)
    if loc.scheme != "file":
        return None
    path = loc.path
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        return f"{path} is a file, not a directory; give a directory path"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable by this user; give a directory it can write"
    return None
