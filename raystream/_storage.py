"""Durable storage: objects under a local directory or an S3 prefix. Checkpoints
(`_runtime/state/store.py`) and FileSink (`connectors/files/sink.py`) both write through it, so
atomicity and fsync live in this one place.

Operations: put, get, list, delete; put_if_absent (the conditional put that makes a
manifest write the commit point: a key written once is never overwritten); and
promote, which makes staged objects visible under their final keys (FileSink's
two-phase commit: a staged write is a put under a name readers skip, `_pending-...`).

- Local: every key stays inside the root (StorageKeyError otherwise: `..`, absolute
  paths). With `private` (checkpoints), files are created owner-only (0600) and
  directories 0700; otherwise as the umask says. put writes a hidden temporary file (`.<name>.<uuid>.tmp`) and renames it over
  the key, so readers never see a partial object; put_if_absent hard-links the
  finished temporary file to the key, which fails if the key exists; promote renames.
  Files and then their directories are fsynced before a write or a promote returns, so
  what returned survives a power loss. Deleting the last key of a directory removes
  the directory.
- S3: put_if_absent is a PUT with `If-None-Match: *`; S3 answers 412 when the key
  exists. Promote is a copy and a delete. Endpoint and credentials come from the
  environment (boto3 reads them).
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import uuid
from abc import ABC, abstractmethod
from typing import Callable

from raystream import _files
from raystream.errors import StorageKeyError

logger = logging.getLogger(__name__)


class Storage(ABC):
    """Objects under one root; keys are relative paths with '/' separators."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes, before_publish: Callable[[], None] | None = None) -> bool:
        """Write `key` only if it does not exist; False if it did (nothing written).
        `before_publish` runs when the bytes are written but not yet visible (fault tests)."""

    @abstractmethod
    def get(self, key: str, limit: int | None = None) -> bytes:
        """The object's bytes; raises FileNotFoundError if there is none. With `limit`, at
        most `limit` + 1 bytes: a caller tells an object larger than it expects without
        reading it whole."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys that start with `prefix`, sorted."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Delete the keys; missing keys are ignored."""

    @abstractmethod
    def promote(self, moves: list[tuple[str, str]]) -> None:
        """Make each staged key visible under its final key, durably; a move found done
        already (only the final key exists) is skipped. Raises FileNotFoundError when
        neither key of a move exists; its `filename` is the final key's URI."""

    @abstractmethod
    def uri(self, key: str = "") -> str: ...


class LocalStorage(Storage):
    def __init__(self, root: str, private: bool = False):
        self.root = os.path.abspath(root)
        self.private = private
        self.file_mode, self.dir_mode = (0o600, 0o700) if private else (0o666, 0o777)  # the umask applies
        self._root_checked = False

    def _check_private_root(self) -> None:
        if self._root_checked:
            return
        try:
            st = os.lstat(self.root)
        except FileNotFoundError:
            return  # made by the first write, 0700
        if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise StorageKeyError(
                f"{self.root} is {'a link' if stat.S_ISLNK(st.st_mode) else 'not yours' if st.st_uid != os.geteuid() else 'writable by others'}: "
                "checkpoints are kept only in a folder of your own that no one else can write "
                f"(chmod go-w {self.root}, or use another folder)")
        self._root_checked = True

    def _path(self, key: str) -> str:
        """The key's path, if it stays under the root, symbolic links resolved: a link
        planted in the storage does not lead a delete or a write elsewhere. A private root
        must be this user's own and writable by no one else, so that nobody else can
        plant anything in it (nor swap a folder for a link between a check and a use)."""
        if self.private:
            self._check_private_root()
        path = os.path.normpath(os.path.join(self.root, *key.split("/")))
        root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if "\0" in key or not (path == self.root or path.startswith(self.root + os.sep)) or not (
                real == root or real.startswith(root + os.sep)):
            raise StorageKeyError(f"storage key {key[:200]!r} names a file outside {self.root}; it is refused")
        return path

    def _makedirs(self, path: str) -> None:
        if os.path.isdir(path):
            return
        parent = os.path.dirname(path)
        if parent != path:
            self._makedirs(parent)
        try:
            os.mkdir(path, self.dir_mode)
        except FileExistsError:
            pass

    def _write_temp(self, path: str, data: bytes) -> str:
        self._makedirs(os.path.dirname(path))
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.file_mode), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        os.replace(self._write_temp(path, data), path)
        fsync_dir(os.path.dirname(path))

    def put_if_absent(self, key: str, data: bytes, before_publish: Callable[[], None] | None = None) -> bool:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        if before_publish is not None:
            before_publish()
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        fsync_dir(os.path.dirname(path))
        return True

    def get(self, key: str, limit: int | None = None) -> bytes:
        fd = os.open(self._path(key), os.O_RDONLY | os.O_NONBLOCK)  # a planted FIFO does not hang the reader
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StorageKeyError(f"{self.uri(key)} is not a regular file; it is not read")
            return f.read() if limit is None else f.read(limit + 1)

    def list(self, prefix: str) -> list[str]:
        if self.private:
            self._check_private_root()  # raises: a root of someone else's is not an empty one
        try:
            base = self._path(prefix.rsplit("/", 1)[0]) if "/" in prefix else self.root
        except StorageKeyError as exc:  # a folder that leads outside: nothing of the storage is there
            logger.warning("%s", exc)
            return []
        if not os.path.isdir(base):
            return []
        keys = []
        for dirpath, _, names in os.walk(base):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for name in names:
                if name.endswith(".tmp") or os.path.islink(os.path.join(dirpath, name)):  # raystream writes no links
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, keys: list[str]) -> None:
        dirs = set()
        for key in keys:
            path = self._path(key)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            dirs.add(os.path.dirname(path))
        for directory in sorted(dirs, key=len, reverse=True):  # deepest first
            while directory != self.root and directory.startswith(self.root + os.sep):
                try:
                    os.rmdir(directory)
                except OSError:  # not empty (or already gone): keep the rest
                    break
                directory = os.path.dirname(directory)

    def promote(self, moves: list[tuple[str, str]]) -> None:
        dirs = set()
        for staged, final in moves:
            src, dst = self._path(staged), self._path(final)
            try:
                os.rename(src, dst)
            except FileNotFoundError:
                if not os.path.exists(dst):
                    raise FileNotFoundError(errno.ENOENT, "neither it nor its staged object exists", dst) from None
            dirs.add(os.path.dirname(dst))
        for directory in dirs:  # the renames are durable before this returns
            fsync_dir(directory)

    def uri(self, key: str = "") -> str:
        return self._path(key) if key else self.root


class S3Storage(Storage):
    def __init__(self, bucket: str, prefix: str):
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        _files.s3_client().put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_if_absent(self, key: str, data: bytes, before_publish: Callable[[], None] | None = None) -> bool:
        from botocore.exceptions import ClientError

        if before_publish is not None:
            before_publish()
        try:
            _files.s3_client().put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
            return True
        except Exception as exc:
            conflict = isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in (
                "PreconditionFailed", "ConditionalRequestConflict")
            # The outcome is unknown (the response was lost), or the key exists, perhaps
            # because a retry of our own successful PUT met it: read back and compare.
            try:
                existing = self.get(key, limit=len(data))  # a planted huge object is not read whole
            except FileNotFoundError:
                if conflict:
                    return False
                raise exc from None
            if existing == data:
                logger.info("put of %s succeeded although its response %s", self.uri(key),
                            "said the key existed" if conflict else "was lost")
                return True
            return False

    def get(self, key: str, limit: int | None = None) -> bytes:
        from botocore.exceptions import ClientError

        ranged = {} if limit is None else {"Range": f"bytes=0-{limit}"}
        try:
            body = _files.s3_client().get_object(Bucket=self.bucket, Key=self._key(key), **ranged)["Body"]
            return body.read() if limit is None else body.read(limit + 1)  # a server may ignore the range
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                raise FileNotFoundError(self.uri(key)) from None
            if code == "InvalidRange":  # a range of an empty object
                return b""
            raise

    def list(self, prefix: str) -> list[str]:
        full = _files.list_keys(_files.Location("s3", self._key(prefix), self.bucket))
        cut = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[cut:] for k in full)

    def delete(self, keys: list[str]) -> None:
        client = _files.s3_client()
        for i in range(0, len(keys), 1000):
            chunk = [{"Key": self._key(k)} for k in keys[i:i + 1000]]
            if chunk:
                client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})

    def promote(self, moves: list[tuple[str, str]]) -> None:
        from botocore.exceptions import ClientError

        client = _files.s3_client()
        for staged, final in moves:
            try:
                client.copy_object(Bucket=self.bucket, Key=self._key(final),
                                   CopySource={"Bucket": self.bucket, "Key": self._key(staged)})
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                    raise
                try:
                    client.head_object(Bucket=self.bucket, Key=self._key(final))
                except ClientError:
                    raise FileNotFoundError(errno.ENOENT, "neither it nor its staged object exists",
                                            self.uri(final)) from None
                continue  # promoted before
            client.delete_object(Bucket=self.bucket, Key=self._key(staged))

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


def open_storage(uri: str, private: bool = False) -> Storage:
    """A Storage for `s3://bucket/prefix`, `file:///dir` or a plain directory path.
    `private`: local files owner-only (a bucket's access is its policy's: docs/security.md)."""
    loc = _files.Location.parse(uri)
    if loc.scheme == "s3":
        return S3Storage(loc.bucket, loc.path)
    return LocalStorage(loc.path, private)


def fsync_dir(path: str) -> None:
    """Make the names in a directory (a rename, a new link) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
