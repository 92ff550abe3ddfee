"""The package's layers: every folder and top-level module imports only those below it
(LAYERS), the public API does not load the runtime, and no module imports form a cycle.
Checked on the source with `ast`, and on a real `import raystream`."""
import ast
import inspect
import pathlib
import shutil
import subprocess
import sys

import pytest

import raystream
from raystream import errors

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "raystream"
#: Function-level imports allowed outside the runtime, and why.
LAZY = {
    "raystream._runtime": "the public API loads the runtime only when a job starts or checkpoints are read",
    "boto3": "boto3 loads only when S3 (or `raystream cluster init`) is used",
    "botocore": "boto3 loads only when S3 (or `raystream cluster init`) is used",
    "ray.autoscaler": "only `raystream cluster init` checks the config it writes with Ray's validator",
    "matplotlib": "an optional extra (raystream[bench]): only the benchmark's --plot needs it",
    "psycopg": "an optional extra (raystream[postgres]): only PostgresSink needs it",
    "confluent_kafka": "an optional extra (raystream[kafka]): only KafkaSource needs it",
    "raystream.connectors.postgres.sink": "rs.sinks.PostgresSink loads on first use, with its optional library",
    "raystream.connectors.postgres.writer": "loads with raystream.connectors.postgres.sink, when psycopg is installed",
    "raystream.connectors.postgres.tables": "loads with raystream.connectors.postgres.sink, when psycopg is installed",
    "raystream.connectors.postgres.session": "loads with raystream.connectors.postgres.sink, when psycopg is installed",
    "raystream.connectors.kafka": "rs.sources.KafkaSource loads on first use, with its optional library",
    "pyarrow.compute": "loads only when a job defines a columnar step (whose expressions loaded it already)",
}


#: The package from the top down, one row per layer: a module may import its own room
#: (its folder, or itself) and the rooms of the rows below, never those of its row or above.
#: A room is a top-level module, a folder of the package, or a folder of the runtime.
LAYERS: list[tuple[str, ...]] = [
    ("bench", "cli"),                          # entry points
    ("raystream",),                            # the package's face: rs.*
    ("job",),                                  # the job builder
    ("stream",),
    ("sinks", "sources"),                      # where users reach every sink and source
    ("checkpoints", "audit"),                  # reading checkpoints (loads the runtime lazily)
    ("connectors",),                           # files, PostgreSQL, Kafka, Nexmark
    ("_runtime",),                             # the runtime, its folders from the top down:
    ("_runtime.control",),
    ("_runtime.subtask",),
    ("_runtime.checkpointing",),
    ("_runtime.operators",),
    ("_runtime.time",),
    ("_runtime.transport",),
    ("_runtime.plan",),
    ("_runtime.state",),
    ("_checks", "graph", "dedup"),             # the definitions everything shares:
    ("config", "process", "windows", "aggregates", "result", "retry", "ttl"),
    ("testing", "sink_api", "source_api", "event_time"),
    ("_storage",),
    ("_files", "_arrow_values", "errors", "_version", "_moved_modules"),
]


def modules(package: pathlib.Path = PACKAGE) -> dict[str, ast.Module]:
    found = {}
    for path in package.rglob("*.py"):
        name = ".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def room(module: str) -> str:
    """raystream.X.Y -> X; raystream._runtime.X.Y -> _runtime.X; raystream -> raystream."""
    parts = module.split(".")[1:]
    if not parts:
        return "raystream"
    return ".".join(parts[:2]) if parts[0] == "_runtime" and len(parts) > 1 else parts[0]


def upward_imports(package: pathlib.Path = PACKAGE) -> list[str]:
    """Every import, at any level, that runs to its own row or above, as "module:line -> target"."""
    rank = {r: i for i, row in enumerate(LAYERS) for r in row}
    trees = modules(package)
    found = []
    for name, tree in trees.items():
        assert room(name) in rank, f"{name}: its room {room(name)!r} has no row in LAYERS; place it"
        for target, node in imports(tree, top_level=True) + imports(tree, top_level=False):
            if target not in trees or target == "raystream" and name != "raystream":
                continue  # outside the package, or `from raystream import <module>` (counted by its module)
            here, there = room(name), room(target)
            if here != there and rank[there] <= rank[here] and not any(f.startswith(f"{name}:{node.lineno} ") for f in found):
                found.append(f"{name}:{node.lineno} -> {target} ({there} is not below {here})")
    return found


def imports(tree: ast.Module, *, top_level: bool) -> list[tuple[str, ast.stmt]]:
    """(imported module, node) of the module's top-level imports, or of the others."""
    found = []
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or (id(node) in top) != top_level:
            continue
        if isinstance(node, ast.Import):
            found.extend((alias.name, node) for alias in node.names)
        elif node.module:
            found.append((node.module, node))
            found.extend((f"{node.module}.{alias.name}", node) for alias in node.names)
    return found


def in_type_checking(tree: ast.Module) -> set[int]:
    return {id(n) for block in tree.body if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for n in ast.walk(block)}


def test_every_import_runs_down_the_layers():
    assert upward_imports() == []


def test_the_layering_check_finds_a_planted_upward_import(tmp_path):
    planted = shutil.copytree(PACKAGE, tmp_path / "raystream", ignore=shutil.ignore_patterns("__pycache__"))
    store = planted / "_runtime" / "state" / "store.py"
    store.write_text(store.read_text() + "\nfrom raystream._runtime.control import driver  # planted\n")
    sources = planted / "sources.py"
    sources.write_text(sources.read_text() + "\n\ndef planted():\n    import raystream.job\n")
    found = upward_imports(planted)
    assert len(found) == 2, found
    assert "raystream._runtime.state.store" in found[0] + found[1] and "raystream.sources" in found[0] + found[1]


def test_the_runtime_never_imports_the_job_builder_or_the_package_root():
    for name, tree in modules().items():
        if not name.startswith("raystream._runtime"):
            continue
        for target, node in imports(tree, top_level=True) + imports(tree, top_level=False):
            for builder in ("raystream.job", "raystream.stream"):
                assert target != builder and not target.startswith(builder + "."), f"{name} imports {target}"
            if isinstance(node, ast.ImportFrom) and node.module == "raystream":
                assert all((PACKAGE / f"{a.name}.py").exists() for a in node.names), \
                    f"{name} imports names from the package root"


def test_function_level_imports_only_defer_the_runtime_or_boto3():
    for name, tree in modules().items():
        for target, node in imports(tree, top_level=False):
            if id(node) in in_type_checking(tree) or (isinstance(node, ast.ImportFrom) and target != node.module):
                continue
            assert not name.startswith("raystream._runtime"), f"{name}:{node.lineno} imports {target} in a function"
            assert any(target == p or target.startswith(p + ".") for p in LAZY), \
                f"{name}:{node.lineno} imports {target} in a function; import it at the top"


def test_module_imports_form_no_cycle():
    trees = modules()
    graph = {name: {t for t, node in imports(tree, top_level=True)
                    if t in trees and t != name and id(node) not in in_type_checking(tree)}
             for name, tree in trees.items()}
    for name in graph:  # a package's __init__ importing its own modules is no cycle
        if name == "raystream":
            graph[name] = set()
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in graph[name]:
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_import_raystream_does_not_load_the_runtime_or_ray():
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import raystream"],
                         capture_output=True, text=True, check=True)
    loaded = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line]
    assert "raystream.job" in loaded
    assert not [m for m in loaded if m.startswith("raystream._runtime") or m == "ray" or m.startswith("ray.")]


def test_every_error_is_importable_from_raystream_and_rooted_in_raystream_error():
    declared = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(declared) >= 10
    for cls in declared:
        assert issubclass(cls, raystream.RaystreamError)
        assert getattr(raystream, cls.__name__) is cls and cls.__name__ in raystream.__all__
    for name, tree in modules().items():  # and no module declares an error of its own
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and name != "raystream.errors":
                bases = {ast.unparse(b) for b in node.bases}
                assert not bases & {"RaystreamError", "Exception"} or name.startswith("raystream._runtime"), \
                    f"{name} declares the error {node.name}; errors users meet live in raystream/errors.py"
