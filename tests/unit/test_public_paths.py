"""What users import keeps working across the package's rearrangement: every public name
of raystream 0.1.0 (tests/data/public-api-0.1.0.txt, listed from that version) resolves,
and a module path that moved into a folder (raystream.nexmark, raystream.faults, ...)
imports the module itself, with a FutureWarning that names its new path."""
import importlib
import pathlib
import subprocess
import sys

import pytest

import raystream as rs
from raystream._moved_modules import MOVED

NAMES = (pathlib.Path(__file__).resolve().parents[1] / "data" / "public-api-0.1.0.txt").read_text().split()


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("name", NAMES)
def test_every_public_name_of_0_1_0_resolves(name):
    module, attribute = name.split(":")
    assert hasattr(importlib.import_module(module), attribute), name


def test_the_paths_users_write_today():
    assert rs.sinks.FileSink.__module__ == "raystream.connectors.files.sink"
    assert rs.sinks.PostgresSink.__module__ == "raystream.connectors.postgres.sink"
    assert rs.sources.KafkaSource.__module__ == "raystream.connectors.kafka"
    assert rs.sources.FileSource.__module__ == "raystream.connectors.files.source"
    assert rs.faults.CrashAt.__module__ == "raystream.testing.faults"


@pytest.mark.parametrize("old", sorted(MOVED))
def test_a_moved_module_path_imports_the_module_itself_and_says_where_it_lives(old):
    package, _, name = old.rpartition(".")
    code = (f"import warnings; warnings.simplefilter('always')\n"
            f"import {old} as old, {MOVED[old]} as new\n"
            f"from {package} import {name} as attribute\n"
            f"import importlib, importlib.util, {package}\n"
            f"assert attribute is new and getattr({package}, {name!r}) is new\n"
            f"assert new.__spec__.name == {MOVED[old]!r}, new.__spec__\n"  # the alias left the real spec alone
            f"assert importlib.util.find_spec({MOVED[old]!r}).origin == new.__file__\n"
            f"assert importlib.reload(new) is new and new.__name__ == {MOVED[old]!r}\n"
            f"assert old is new and new.__name__ == {MOVED[old]!r}, (old, new)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"<string>:2: FutureWarning: {old} moved to {MOVED[old]}; import it from there" in out.stderr


def test_old_module_names_are_attributes_of_the_package_as_after_an_import_in_0_1_0():
    code = "import raystream, warnings; warnings.simplefilter('ignore'); print(raystream.file_sink.FileSink.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "raystream.connectors.files.sink", out.stderr


def test_import_raystream_loads_no_connector_library():
    out = subprocess.run([sys.executable, "-c", "import sys, raystream; "
                          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                          "('psycopg', 'confluent_kafka', 'boto3')))"],
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
