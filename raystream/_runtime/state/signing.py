"""The checkpoint key: where it comes from, and the HMAC-SHA256 that signs manifests and
the records that fence them (docs/security.md).

Checkpoints are signed by default. The key, first match wins:

1. `RAYSTREAM_CHECKPOINT_KEY`: the key itself, in the environment of every process.
2. The key file, `RAYSTREAM_CHECKPOINT_KEY_FILE` or `~/.raystream/checkpoint_key`: made
   on first use by the process that starts a job (32 random bytes, hex, owner-only, as
   Ray keeps its token), read by every other process. A cluster ships it to every node
   as it ships Ray's token (cluster.yaml's file_mounts); a process that finds no key
   never makes one of its own, since its signatures would match no one else's.

`RAYSTREAM_UNSIGNED_CHECKPOINTS=1` is the explicit opt-out, warned about in every
process: what is unsigned, or signed with another key, is accepted unverified (anyone who
can write the storage can then run code in the job and in whoever reads its
checkpoints). What is written is still signed when there is a key, so a savepoint taken
with the opt-out restores without it.

Signed bodies carry the key's id (an HMAC of a constant, which reveals nothing of the
key), so a reader with another key says so instead of calling the checkpoint damaged.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any

from raystream.errors import CheckpointKeyError, CorruptCheckpointError

logger = logging.getLogger(__name__)

KEY_ENV = "RAYSTREAM_CHECKPOINT_KEY"
KEY_FILE_ENV = "RAYSTREAM_CHECKPOINT_KEY_FILE"
UNSIGNED_ENV = "RAYSTREAM_UNSIGNED_CHECKPOINTS"
DEFAULT_KEY_FILE = "~/.raystream/checkpoint_key"

_warned_unsigned = False


@dataclass(frozen=True)
class Key:
    """A checkpoint key: the secret, where it came from, and its public id."""

    secret: bytes = field(repr=False)
    source: str  # the environment variable or the file it was read from
    key_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_id", hmac.new(self.secret, b"raystream key id", hashlib.sha256).hexdigest()[:12])


def unsigned() -> bool:
    """Whether the user opted out of signed checkpoints."""
    return os.environ.get(UNSIGNED_ENV, "").strip().lower() in ("1", "true", "yes")


def key_file() -> str:
    return os.path.expanduser(os.environ.get(KEY_FILE_ENV) or DEFAULT_KEY_FILE)


def current(create: bool = False) -> Key | None:
    """This process's key. `create`: make the key file when there is none (the process
    that starts a job). Without a key: CheckpointKeyError, or None with the opt-out."""
    global _warned_unsigned
    if unsigned() and not _warned_unsigned:
        _warned_unsigned = True
        logger.warning("%s is set: unsigned checkpoints are accepted unverified, so anyone who can write the "
                       "checkpoint storage can run code in this job", UNSIGNED_ENV)
    secret = os.environ.get(KEY_ENV, "").strip()
    if secret:
        return Key(secret.encode("utf-8"), KEY_ENV)
    path = key_file()
    if create:
        _create(path)
    elif unsigned() and not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            text = f.read(4096).strip()
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointKeyError(
            f"no checkpoint key on {socket.gethostname()}: {path} does not exist and {KEY_ENV} is not set. Checkpoints "
            f"are signed; copy the key of the processes that wrote them to {path} (owner-only), or set {KEY_ENV}. "
            f"On a cluster, cluster.yaml's file_mounts ship it to every node") from None
    if not text:
        raise CheckpointKeyError(f"the checkpoint key file {path} is empty: delete it to have a new one made, or "
                                 "copy the key of the processes that wrote the checkpoints into it")
    if st.st_uid != os.geteuid():
        raise CheckpointKeyError(f"the checkpoint key file {path} belongs to another user, who could know the key: "
                                 "use a key file of your own")
    if st.st_mode & 0o077:
        logger.warning("the checkpoint key file %s can be read by other users (mode %o): chmod 600 %s",
                       path, st.st_mode & 0o777, path)
    return Key(text, path)


def _create(path: str) -> None:
    """Make the key file, owner-only, unless it exists; two processes racing agree."""
    if os.path.exists(path):
        return
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    tmp = f"{path}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_hex(32).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process made one first: theirs is the key
        logger.warning("made a checkpoint key at %s: checkpoints are signed with it. Every process that reads "
                       "them needs it (cluster.yaml ships it to the nodes); keep it private", path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


# --- signing JSON bodies ------------------------------------------------------------------

def canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def sign(body: dict[str, Any], key: Key) -> str:
    return hmac.new(key.secret, canonical(body), hashlib.sha256).hexdigest()


def verify(body: dict[str, Any], signature: Any, key: Key | None, what: str) -> None:
    """Raise unless `body` carries a valid signature by `key` (nothing to check without
    a key). Unsigned, or signed with another key: CheckpointKeyError, a configuration
    matter, never a reason to refuse the checkpoint for good. Signed with this key but
    changed since: CorruptCheckpointError."""
    signer = body.get("key_id")
    if unsigned() and (not signature or key is None or signer != key.key_id):
        return  # the opt-out: accepted unverified (unsigned, or signed with another or an unknown key)
    if key is None:
        raise CheckpointKeyError(f"{what} cannot be verified: this process has no checkpoint key")
    if not signature:
        raise CheckpointKeyError(
            f"{what} is not signed, and this process verifies signatures: it was written with "
            f"{UNSIGNED_ENV}=1 or by a raystream before signing, or planted by someone who can write the storage. "
            f"If you trust everyone who can write there, read it with {UNSIGNED_ENV}=1")
    if not isinstance(signer, str) or not signer:  # signed before key ids: this key, or another?
        if isinstance(signature, str) and hmac.compare_digest(signature, sign(body, key)):
            return
        raise CheckpointKeyError(
            f"{what} was signed by a raystream before key ids, not with this process's key {key.key_id} (from "
            f"{key.source}), or changed since: give this process the key of the job that wrote it")
    if signer != key.key_id:
        raise CheckpointKeyError(
            f"{what} was signed with checkpoint key {signer}, and this process has key {key.key_id} (from "
            f"{key.source}): give this process the key of the job that wrote it ({KEY_ENV} or {key_file()})")
    if not isinstance(signature, str) or not hmac.compare_digest(signature, sign(body, key)):
        raise CorruptCheckpointError(f"{what} does not match its signature: it was changed after it was written")


def signed_json(body: dict[str, Any], key: Key | None) -> bytes:
    """`body` as JSON with a SHA-256 of its content and, with a key, a signature. A
    record's body names its kind and its own storage key (`record_body`), so a signed
    record copied elsewhere, or read as another kind, does not verify as one."""
    raw = dict(body)
    if key is not None:
        raw["key_id"] = key.key_id
    out = dict(raw)
    out["sha256"] = hashlib.sha256(canonical(raw)).hexdigest()
    if key is not None:
        out["signature"] = sign(raw, key)
    return json.dumps(out, sort_keys=True).encode("utf-8")


def read_signed_json(data: bytes, key: Key | None, what: str, kind: str | None = None,
                     where: str | None = None) -> dict[str, Any]:
    """The body of `signed_json` bytes, checked (its checksum, and its signature with a
    key); with `kind` and `where`, only a record of that kind written at that key."""
    raw = parse_json(data, what)
    sha, signature = raw.pop("sha256", None), raw.pop("signature", None)
    if not isinstance(sha, str) or not hmac.compare_digest(sha, hashlib.sha256(canonical(raw)).hexdigest()):
        raise CorruptCheckpointError(f"{what} is damaged: its checksum does not match")
    verify(raw, signature, key, what)
    legacy = unsigned() and "type" not in raw  # written by a raystream before records had kinds
    for name, value in (("type", kind), ("key", where)):
        if value is not None and not legacy and raw.get(name) != value:
            raise CorruptCheckpointError(f"{what} is a {raw.get('type')!r} record written as {raw.get('key')!r}, "
                                         f"not a {kind!r} record of this key: it was copied")
    raw.pop("key_id", None)
    return raw


MAX_RECORD_BYTES = 1 << 20  # a fencing record, a base, a progress record: anything larger was planted
MAX_MANIFEST_BYTES = 16 << 20  # about 30,000 subtasks' snapshots


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object, or CorruptCheckpointError: any parse error (deep nesting included)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise CorruptCheckpointError(f"{what} is {len(data)} bytes, too large to be one; it is not read")
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to be ours
        raise CorruptCheckpointError(f"{what} is not readable JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(raw, dict):
        raise CorruptCheckpointError(f"{what} is not a JSON object")
    return raw
