"""Compaction manifests (`_compaction-<id>.json`, compaction.py's step 2): writing them
signed, and reading back only those that may be followed.

A compaction manifest is a file in a sink's directory, which others may be able to
write, so it is never simply believed (docs/security.md): it is read only if it is a
regular file of at most 1 MiB, it is a signed "compaction" record of its own name (the
checkpoint key), its `output` is the `part-compacted-<id>.parquet` of its own name and
its inputs plain names of committed files in the same directory. One that fails, an
unsigned one of a raystream before signing included, is ignored with a warning naming
it: it deletes nothing and hides nothing from readers.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable

from raystream._storage import Storage
from raystream.errors import CorruptCheckpointError, RestoreError, StorageKeyError

logger = logging.getLogger(__name__)

_MANIFEST = "_compaction-"
#: A compaction manifest larger than this is not read.
MAX_MANIFEST_BYTES = 1 << 20
#: The <id> of `_compaction-<id>.json` (`_merge` writes 12 hex digits).
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: What compaction merges, so all a manifest may name as an input: a plain name in the
#: same directory (no '/' or '\\', not '.' or '..', not hidden by '_' or '.'), as FileSink
#: names its committed files (`part-<step>@<subtask>@<run>@...`, step and run ids of
#: letters, digits, '_', '-' and '.') and compaction its merged ones.
_INPUT = re.compile(r"part-[A-Za-z0-9][A-Za-z0-9_.@-]{0,241}\.parquet")


@dataclass(frozen=True)
class _Manifest:
    """A compaction manifest that passed the checks."""

    key: str
    output: str
    inputs: tuple[str, ...]

    @property
    def staged(self) -> str:
        return f"_compacting-{self.key[len(_MANIFEST):-len('.json')]}.parquet"


@dataclass(frozen=True)
class _Refused:
    """Why a compaction manifest is not followed."""

    reason: str


_NO_KEY: Any = object()


def _signing_key() -> Any:
    """This process's checkpoint key (None: the user turned signing off); raises
    CheckpointKeyError when it has none."""
    from raystream._runtime.state.manifest import signing_key  # not loaded by `import raystream`

    return signing_key()


def _key_once() -> Callable[[], Any]:
    """`_signing_key`, looked up on first use only: a directory without compaction
    manifests is read without a key."""
    found: list[Any] = []

    def key() -> Any:
        if not found:
            found.append(_signing_key())
        return found[0]
    return key


def _is_manifest(key: str) -> bool:
    return key.startswith(_MANIFEST) and key.endswith(".json") and "/" not in key


def _manifests(storage: Storage, keys: list[str], key: Callable[[], Any]) -> list[_Manifest]:
    """The compaction manifests among `keys` that may be followed; the others are
    ignored with a warning naming them (they delete and hide nothing). `key` gives the
    signing key (raising CheckpointKeyError when this process has none)."""
    found = []
    for name in keys:
        if not _is_manifest(name):
            continue
        try:
            manifest = _read_manifest(storage, name, key)
        except FileNotFoundError:
            continue  # finished meanwhile
        if isinstance(manifest, _Refused):
            logger.warning("ignoring compaction manifest %s: %s; it is not followed (nothing it names is deleted "
                           "or hidden from readers)", storage.uri(name), manifest.reason)
        else:
            found.append(manifest)
    return found


def _read_manifest(storage: Storage, name: str, key: Callable[[], Any]) -> _Manifest | _Refused:
    from raystream._runtime.state.manifest import read_signed_json  # not loaded by `import raystream`

    manifest_id = name[len(_MANIFEST):-len(".json")]
    if not _ID.fullmatch(manifest_id):
        return _Refused("its name is not _compaction-<id>.json with an id of letters, digits, '_' and '-'")
    data = _read_small(storage, name)
    if isinstance(data, _Refused):
        return data
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to be one
        return _Refused(f"it is not readable JSON ({type(exc).__name__}: {str(exc)[:200]})")
    if isinstance(raw, dict) and set(raw) == {"output", "inputs"}:
        return _Refused("it is unsigned, written by a raystream before signing: finish or undo that compaction by "
                        "hand (delete the inputs it names if its output holds them, else its output)")
    signer = key()  # outside the try: a process without a key says so, it does not ignore
    try:
        body = read_signed_json(data, signer, storage.uri(name), "compaction", name)
    except (CorruptCheckpointError, RestoreError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        # RestoreError: CheckpointKeyError, unsigned or signed with another key
        return _Refused(f"it is not a signed manifest ({type(exc).__name__}: {str(exc)[:300]})")
    output = f"part-compacted-{manifest_id}.parquet"
    if not isinstance(body, dict) or set(body) != {"type", "key", "output", "inputs"}:
        return _Refused("it does not hold exactly an output and a list of inputs")
    if body["output"] != output:
        return _Refused(f"its output is not {output}, the merged file of its own name")
    inputs = body["inputs"]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        return _Refused("its inputs are not a list of file names")
    bad = [i for i in inputs if not _INPUT.fullmatch(i) or i == output]
    if bad:
        return _Refused(f"it names inputs that compaction never merges (first: {bad[0][:100]!r}): inputs are "
                        "part-...parquet files of the same directory, not its output")
    if len(set(inputs)) != len(inputs):
        return _Refused("it names an input twice")
    return _Manifest(name, output, tuple(inputs))


def _read_small(storage: Storage, name: str) -> bytes | _Refused:
    """The bytes of `name`; refused when larger than MAX_MANIFEST_BYTES or not a regular
    file (Storage.get reads at most the limit, and local storage neither follows a link
    out of its folder nor waits on a FIFO)."""
    try:
        data = storage.get(name, limit=MAX_MANIFEST_BYTES)
    except StorageKeyError as exc:
        return _Refused(str(exc))
    if len(data) > MAX_MANIFEST_BYTES:
        return _Refused(f"it is more than the {MAX_MANIFEST_BYTES} bytes a compaction manifest may have")
    return data
