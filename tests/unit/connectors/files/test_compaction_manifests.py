"""Compaction never follows a compaction manifest it cannot trust (issue 22, finding 7).

A `_compaction-<id>.json` in a FileSink directory names a merged file and the files it
replaces; compaction deletes what it names and readers skip them. Whoever can write a
file there must not be able to make compaction delete files outside the directory, nor
hide committed files from readers: a manifest must be signed, name files of its own
directory only, and be small. Anything else is ignored with a warning. No Ray needed.
"""
from __future__ import annotations

import json
import logging
import os

import pytest

from raystream.connectors.files import compaction
from raystream._runtime.state.manifest import read_signed_json, signed_json
from raystream._runtime.state.manifest import signing_key as current_key
from raystream._storage import open_storage
from raystream.sinks import FileSink, SinkContext, compact_files, parquet_bytes, read_files

KEY = "test-compaction-signing-key"
KEYS = {}


@pytest.fixture(autouse=True)
def signing_key(monkeypatch):
    """This process's key, and another (what the environment makes of another secret)."""
    monkeypatch.setenv("RAYSTREAM_CHECKPOINT_KEY", "another-key")
    KEYS["other"] = current_key()
    monkeypatch.setenv("RAYSTREAM_CHECKPOINT_KEY", KEY)
    KEYS["ours"] = current_key()
    return KEYS["ours"]


@pytest.fixture
def out(tmp_path):
    """A sink directory with 6 committed Parquet files (ids 0-5), written by a FileSink."""
    directory = str(tmp_path / "out")
    writer = FileSink(directory, format="parquet", rows_per_file=1, roll="checkpoint").build_writer(
        SinkContext("out", 0, 1, transactional=False, run_id="r1", attempt=1))
    for i in range(6):
        writer.write_batch([{"id": i}])
    writer.close()
    return directory


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim"
    path.write_bytes(b"must survive")
    return path


def committed(directory: str) -> list[str]:
    return sorted(k for k in open_storage(directory).list("") if k.startswith("part-out@"))


def ids(directory: str) -> list[int]:
    return sorted(r["id"] for r in read_files(directory, format="parquet"))


def plant(directory: str, name: str, data: bytes) -> None:
    open_storage(directory).put(name, data)


def signed(body) -> bytes:
    return signed_json(body, KEYS["ours"])


def legacy(body) -> bytes:
    """The unsigned format of raystream before signed compaction manifests."""
    return json.dumps(body).encode()


def warned(caplog, manifest: str) -> bool:
    return any(manifest in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# --- paths outside the directory --------------------------------------------------------

@pytest.mark.parametrize("encode", [signed, legacy], ids=["signed", "unsigned"])
@pytest.mark.parametrize("inputs", [["../victim"], ["part-x/../../victim"], ["..", "."], ["_pending-x"],
                                    [".hidden.parquet"], ["..\\victim"]])
def test_a_manifest_naming_inputs_outside_the_directory_deletes_nothing(out, victim, caplog, encode, inputs):
    before = committed(out)
    plant(out, "part-compacted-x.parquet", parquet_bytes([[{"id": 100}]]))  # "published": its inputs would go
    plant(out, "_pending-x", b"staged")
    plant(out, "_compaction-x.json", encode({"output": "part-compacted-x.parquet", "inputs": inputs + before[:1]}))
    with caplog.at_level(logging.WARNING, logger="raystream"):
        assert ids(out) == [0, 1, 2, 3, 4, 5, 100]
        compact_files(out, min_files=100)  # nothing to merge: only earlier compactions are finished
    assert victim.read_bytes() == b"must survive"
    assert committed(out) == before and "_pending-x" in open_storage(out).list("")
    assert ids(out) == [0, 1, 2, 3, 4, 5, 100]
    assert warned(caplog, "_compaction-x.json")


@pytest.mark.parametrize("encode", [signed, legacy], ids=["signed", "unsigned"])
@pytest.mark.parametrize("output", ["../victim", "part-compacted-y.parquet", "part-compacted-x.parquet/../../victim"])
def test_a_manifest_whose_output_is_not_its_own_merged_file_is_not_followed(out, victim, caplog, encode, output):
    """Never published, a manifest's merged file is deleted: it must be the one of its name."""
    before = committed(out)
    plant(out, "part-compacted-y.parquet", parquet_bytes([[{"id": 100}]]))
    plant(out, "_compaction-x.json", encode({"output": output, "inputs": before[:2]}))
    with caplog.at_level(logging.WARNING, logger="raystream"):
        assert ids(out) == [0, 1, 2, 3, 4, 5, 100]
        compact_files(out, min_files=100)
    assert victim.read_bytes() == b"must survive"
    assert committed(out) == before and ids(out) == [0, 1, 2, 3, 4, 5, 100]
    assert warned(caplog, "_compaction-x.json")


# --- hiding committed files from readers -----------------------------------------------

def forged(directory: str, how: str) -> bytes:
    """A manifest naming committed files as replaced by a published file that does not hold
    their rows."""
    body = {"output": "part-compacted-x.parquet", "inputs": committed(directory)[:3]}
    if how == "unsigned":
        return signed_json(body, None)
    if how == "wrong key":
        return signed_json(body, KEYS["other"])
    if how == "tampered":
        raw = json.loads(signed_json({"output": "part-compacted-x.parquet", "inputs": committed(directory)[:1]},
                                     KEYS["ours"]))
        raw["inputs"] = body["inputs"]
        return json.dumps(raw).encode()
    assert how == "legacy"
    return legacy(body)


@pytest.mark.parametrize("how", ["unsigned", "wrong key", "tampered", "legacy"])
def test_an_untrusted_manifest_hides_no_committed_file(out, caplog, how):
    before = committed(out)
    plant(out, "part-compacted-x.parquet", parquet_bytes([[{"id": 100}]]))
    plant(out, "_compaction-x.json", forged(out, how))
    with caplog.at_level(logging.WARNING, logger="raystream"):
        assert set(before) <= set(compaction.visible_files(out))
        assert ids(out) == [0, 1, 2, 3, 4, 5, 100]
        compact_files(out, min_files=100)  # does not "finish" it either
    assert committed(out) == before and ids(out) == [0, 1, 2, 3, 4, 5, 100]
    assert warned(caplog, "_compaction-x.json")
    compact_files(out)  # a real compaction beside it loses nothing
    assert ids(out) == [0, 1, 2, 3, 4, 5, 100] and not committed(out)


def test_a_symlinked_manifest_is_not_followed(out, tmp_path, caplog):
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes(signed({"output": "part-compacted-x.parquet", "inputs": committed(out)[:3]}))
    plant(out, "part-compacted-x.parquet", parquet_bytes([[{"id": 100}]]))
    os.symlink(outside, os.path.join(out, "_compaction-x.json"))
    assert ids(out) == [0, 1, 2, 3, 4, 5, 100]  # local storage lists no links: never read, nothing hidden
    compact_files(out, min_files=100)
    assert outside.exists() and len(committed(out)) == 6


@pytest.mark.timeout(60)
def test_a_fifo_named_like_a_manifest_is_not_waited_on(out, caplog):
    os.mkfifo(os.path.join(out, "_compaction-x.json"))
    with caplog.at_level(logging.WARNING, logger="raystream"):
        assert ids(out) == [0, 1, 2, 3, 4, 5]
    assert warned(caplog, "_compaction-x.json")


# --- malformed manifests ----------------------------------------------------------------

def malformed(directory: str, kind: str) -> bytes:
    names = committed(directory)
    output = "part-compacted-x.parquet"
    if kind == "inputs a dict":
        return signed({"output": output, "inputs": {n: 1 for n in names[:3]}})
    if kind == "inputs a string":
        return signed({"output": output, "inputs": names[0]})
    if kind == "inputs nested":
        return signed({"output": output, "inputs": [names[:3]]})
    if kind == "inputs empty":
        return signed({"output": output, "inputs": []})
    if kind == "input is the output":
        return signed({"output": output, "inputs": [output] + names[:3]})
    if kind == "output missing":
        return signed({"inputs": names[:3]})
    if kind == "a list":
        return signed_json_list(names)
    if kind == "deeply nested":
        return b'{"output": "part-compacted-x.parquet", "inputs": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    if kind == "not JSON":
        return b"\xff\xfe not json"
    if kind == "too large":  # signed and valid, but padded past the limit
        return signed({"output": output, "inputs": names[:3]}) + b" " * (compaction.MAX_MANIFEST_BYTES + 1)
    raise AssertionError(kind)


def signed_json_list(names: list[str]) -> bytes:
    return json.dumps([{"output": "part-compacted-x.parquet", "inputs": names[:3]}]).encode()


@pytest.mark.parametrize("kind", ["inputs a dict", "inputs a string", "inputs nested", "inputs empty",
                                  "input is the output", "output missing", "a list", "deeply nested", "not JSON",
                                  "too large"])
def test_a_malformed_manifest_is_ignored_with_a_warning(out, caplog, kind):
    before = committed(out)
    storage = open_storage(out)
    plant(out, "part-compacted-x.parquet", parquet_bytes([[{"id": 100}]]))
    plant(out, "_compaction-x.json", malformed(out, kind))
    with caplog.at_level(logging.WARNING, logger="raystream"):
        assert ids(out) == [0, 1, 2, 3, 4, 5, 100]
        compact_files(out, min_files=100)
    assert committed(out) == before and ids(out) == [0, 1, 2, 3, 4, 5, 100]
    assert "_compaction-x.json" in storage.list("")
    assert warned(caplog, "_compaction-x.json")


# --- genuine compactions ----------------------------------------------------------------

class DiesAfterPublishing:
    """A storage whose first delete (step 4: the inputs) fails: the compaction dies with its
    merged file published and its inputs still there."""

    def __init__(self, storage, manifests):
        self._storage, self._manifests, self._died = storage, manifests, False

    def __getattr__(self, name):
        return getattr(self._storage, name)

    def put(self, key, data):
        if key.startswith("_compaction-"):
            self._manifests.append(data)
        self._storage.put(key, data)

    def delete(self, keys):
        if not self._died and keys and all(k.startswith("part-out@") for k in keys):
            self._died = True
            raise OSError("killed")
        self._storage.delete(keys)


def test_a_genuine_compaction_signs_its_manifest_and_readers_follow_it(out, monkeypatch, signing_key):
    manifests: list[bytes] = []
    real = compaction.open_storage
    monkeypatch.setattr(compaction, "open_storage", lambda uri: DiesAfterPublishing(real(uri), manifests))
    with pytest.raises(OSError, match="killed"):
        compact_files(out)
    monkeypatch.setattr(compaction, "open_storage", real)
    [data] = manifests
    assert "signature" in json.loads(data)
    body = read_signed_json(data, signing_key, "manifest")
    assert sorted(body["inputs"]) == committed(out)  # the inputs are still there ...
    assert body["output"] in compaction.visible_files(out)
    assert ids(out) == [0, 1, 2, 3, 4, 5]  # ... and readers skip them: every row once
    done = compact_files(out)  # finishes the earlier one (its inputs go), then has nothing to merge
    assert done.files_in == 0 and not committed(out)
    assert open_storage(out).list("") == [body["output"]]
    assert ids(out) == [0, 1, 2, 3, 4, 5]


def test_an_unsigned_manifest_of_an_earlier_version_is_never_followed(out, caplog):
    """Before signing, a compaction that died after publishing left an unsigned manifest.
    Whether its output holds its inputs' rows or not (a planted one may copy them), it
    hides and deletes nothing: readers read both, and the warning says what to do (review
    of issue 22: following such manifests let a writer delete files and cost readers
    memory)."""
    storage = open_storage(out)
    names = committed(out)
    plant(out, "part-compacted-old.parquet", parquet_bytes([[{"id": 0}, {"id": 1}, {"id": 2}]]))
    plant(out, "_compaction-old.json", legacy({"output": "part-compacted-old.parquet", "inputs": names[:3]}))
    with caplog.at_level(logging.WARNING, logger="raystream"):
        assert ids(out) == [0, 0, 1, 1, 2, 2, 3, 4, 5]
        compact_files(out, min_files=100)
    assert committed(out) == names and "_compaction-old.json" in storage.list("")
    assert warned(caplog, "_compaction-old.json") and "finish or undo that compaction by hand" in caplog.text


def test_a_compaction_merges_only_what_a_manifest_may_name(out):
    """A Parquet file that is not a sink's part file is never merged (nor deleted)."""
    plant(out, "notes.parquet", parquet_bytes([[{"id": 100}]]))
    done = compact_files(out)
    assert done.files_in == 6
    assert "notes.parquet" in open_storage(out).list("") and ids(out) == [0, 1, 2, 3, 4, 5, 100]
