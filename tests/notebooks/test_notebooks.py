"""The notebooks in notebooks/, as GitHub shows them and as a user runs them.

The repository stores them with the outputs of a real run (`python notebooks/regenerate.py`
makes them); the first tests check those without running anything. The others (marked
`extended`: a kernel and a Ray each) run a notebook top to bottom on a fresh kernel
(nbclient on ipykernel, as Jupyter would), then read what it left in the kernel and check
that here: the notebooks show results, the tests assert them.
"""
from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# Where paths of a machine start; none of them belongs in a stored output.
MACHINE_PATHS = ("/tmp/", "/work/", "/root/", "/home/", "/Users/", "/private/var/", "/var/folders/")


def _load_regenerate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("regenerate", ROOT / "notebooks" / "regenerate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


regenerate = _load_regenerate()


def _shows_something(source: str) -> bool:
    """Whether a cell must have output when run: it prints, or ends in an expression
    (its value is shown) that is not a call of `shutdown`."""
    body = ast.parse(source).body
    top_level = [node for stmt in body if not isinstance(stmt, (ast.FunctionDef, ast.ClassDef))
                 for node in ast.walk(stmt)]
    prints = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print" for n in top_level)
    last = body[-1] if body else None
    shown = (isinstance(last, ast.Expr) and not source.rstrip().endswith(";")
             and not (isinstance(last.value, ast.Call) and isinstance(last.value.func, ast.Attribute)
                      and last.value.func.attr == "shutdown"))
    return prints or shown


def _output_text(output: nbformat.NotebookNode) -> str:
    """An output as text, without the bytes of images."""
    data = {k: v for k, v in output.get("data", {}).items() if not k.startswith("image/")}
    return json.dumps({**output, "data": data})


def test_the_stored_notebooks_show_the_outputs_of_one_clean_run():
    assert [p.stem for p in NOTEBOOKS] == ["exactly_once", "quickstart", "state"]
    regenerate_hint = "regenerate it: python notebooks/regenerate.py"
    for path in NOTEBOOKS:
        code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        # stored from one run, top to bottom
        assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), f"{path.name}: {regenerate_hint}"
        for cell in code:
            assert cell.outputs or not _shows_something(cell.source), f"{path.name} {cell.id} shows nothing"
            assert "execution" not in cell.metadata, f"{path.name} {cell.id} keeps its timings"
            for output in cell.outputs:
                assert output.output_type != "error", f"{path.name} {cell.id}: {output.get('evalue')}"
                text = _output_text(output)
                assert not [p for p in MACHINE_PATHS if p in text], f"{path.name} {cell.id} names a machine path: {text}"
                assert "Missing packages" not in text, f"{path.name} {cell.id}: {text}"  # Ray's, without ipywidgets
    exactly_once = nbformat.read(ROOT / "notebooks" / "exactly_once.ipynb", as_version=4)
    assert any("image/png" in o.get("data", {}) for c in exactly_once.cells for o in c.get("outputs", []))


def test_which_cells_must_show_something():
    assert _shows_something("job")
    assert _shows_something("x = 1\nprint(x)")
    assert _shows_something("fig.tight_layout()")
    assert not _shows_something("import ray\n\nray.shutdown()")
    assert not _shows_something("def f():\n    print(1)")
    assert not _shows_something("handle = job.start()")
    assert not _shows_something("job;")


def test_regenerate_writes_paths_under_the_run_directory_relative_to_the_notebook():
    output = nbformat.v4.new_output("stream", name="stdout",
                                    text="/runs/rs-x/notebooks/raystream-checkpoints/a/m.json\n/runs/rs-x/jobs/b.py, line 3\n")
    regenerate._relative(output, "/runs/rs-x", Path("/runs/rs-x/notebooks"))
    assert output.text == "raystream-checkpoints/a/m.json\n../jobs/b.py, line 3\n"
    result = nbformat.v4.new_output("execute_result", data={"text/plain": "'/runs/rs-x/notebooks'"})
    regenerate._relative(result, "/runs/rs-x", Path("/runs/rs-x/notebooks"))
    assert result.data["text/plain"] == "'.'"


def test_regenerate_finds_the_paths_of_this_machine_in_outputs():
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    assert regenerate.machine_paths(book) == []
    book.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"{Path.home()}/.cache\n")]
    assert regenerate.machine_paths(book) == [f"cell {book.cells[0].id}: {Path.home()}"]


@pytest.mark.extended  # a kernel of its own
def test_regenerate_runs_a_notebook_in_a_temporary_directory_and_keeps_no_timings(tmp_path: Path):
    path = tmp_path / "probe.ipynb"
    book = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import os\nprint(os.getcwd())"),
        nbformat.v4.new_code_cell("os.path.abspath('out.txt'), os.path.isfile('../jobs/billing.py')"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(book, path)
    ran = regenerate.execute(path, timeout=60)
    assert [c.outputs[0].get("text") or c.outputs[0].data["text/plain"] for c in ran.cells] == [
        ".\n", "('out.txt', True)"]
    assert ran.metadata == book.metadata and not any("execution" in c.metadata for c in ran.cells)
    assert regenerate.machine_paths(ran) == []


def run(name: str, tmp_path: Path, facts: str) -> tuple[nbformat.NotebookNode, dict[str, Any]]:
    """Run notebooks/<name>.ipynb on a fresh kernel started in tmp_path/notebooks, tmp_path laid
    out like the repository (notebooks/ beside jobs/) so that what the notebook writes stays
    there. Then run `facts`, code that sets a JSON-able dict `facts` from what the notebook
    left in the kernel, in that kernel; return the executed notebook and the facts."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "jobs").symlink_to(ROOT / "jobs", target_is_directory=True)
    book = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    book.cells.append(nbformat.v4.new_code_cell(
        f"{facts}\nfrom IPython.display import display\ndisplay({{'application/json': facts}}, raw=True)"))
    client = NotebookClient(book, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path / "notebooks")}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if a cell fails
    check = book.cells.pop()
    [found] = [o.data["application/json"] for o in check.outputs if o.output_type == "display_data"]
    return book, found


@pytest.mark.extended  # a kernel and a local Ray of its own
def test_quickstart_counts_every_word(tmp_path: Path):
    _, facts = run("quickstart", tmp_path, """
import collections
facts = {"first": dict(zip(counts["word"].to_pylist(), counts["count"].to_pylist())),
         "second": dict(result.outputs["counts"]), "state": result.state,
         "expected": collections.Counter(text.read_text().split())}
""")
    assert facts["first"] == facts["expected"] and facts["expected"]["the"] == 101
    assert facts["state"] == "finished" and facts["second"] == facts["expected"]  # job.start(), handle.wait()


@pytest.mark.extended  # a kernel and a local Ray of its own
def test_exactly_once_holds_under_kills_and_at_least_once_loses_nothing(tmp_path: Path):
    book, facts = run("exactly_once", tmp_path, """
import dataclasses
facts = {"killed": list(killed), "restarts": result.restarts, "exactly_once": dataclasses.asdict(verdict),
         "ok": verdict.ok, "at_least_once": dataclasses.asdict(loose), "killed_loose": list(killed_loose),
         "samples": len(samples)}
""")
    assert len(facts["killed"]) == 2 and facts["restarts"] >= 2, facts
    assert facts["ok"], facts["exactly_once"]  # every event exactly once, every total right
    assert len(facts["killed_loose"]) == 2 and facts["at_least_once"]["missing"] == 0, facts
    assert facts["samples"] > 0
    # what it wrote is where the kernel started
    assert (tmp_path / "notebooks" / "billing-out").is_dir() and (tmp_path / "notebooks" / "raystream-checkpoints").is_dir()
    assert any("image/png" in o.get("data", {}) for c in book.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.extended  # a kernel of its own
def test_exactly_once_finds_the_billing_job_from_a_kernel_started_in_the_repository(tmp_path: Path):
    # Its first cell only: the rest runs from notebooks/ above (what it writes goes to the
    # kernel's directory either way), and the kills cost a minute a run.
    (tmp_path / "jobs").symlink_to(ROOT / "jobs", target_is_directory=True)
    book = nbformat.read(ROOT / "notebooks" / "exactly_once.ipynb", as_version=4)
    book.cells = [next(c for c in book.cells if c.cell_type == "code"), nbformat.v4.new_code_cell(
        "print(find_upwards('jobs/billing.py').relative_to(pathlib.Path.cwd()), os.environ['BILLING_OUT'])")]
    NotebookClient(book, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert book.cells[1].outputs[0]["text"].split() == ["jobs/billing.py", str((tmp_path / "billing-out").resolve())]
    [shown] = [o["data"]["text/plain"] for o in book.cells[0].outputs if o.output_type == "execute_result"]
    assert shown.startswith("Job('billing', parallelism=2, "), shown


@pytest.mark.extended  # a kernel of its own
def test_exactly_once_says_where_it_looked_for_the_billing_job(tmp_path: Path):
    book = nbformat.read(ROOT / "notebooks" / "exactly_once.ipynb", as_version=4)
    book.cells = [next(c for c in book.cells if c.cell_type == "code")]  # finds jobs/billing.py; no Ray yet
    client = NotebookClient(book, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError, match=r"no jobs/billing\.py in .* or a folder above it"):
        client.execute()


@pytest.mark.extended  # a kernel and a local Ray of its own
def test_state_is_read_while_running_rescaled_and_saved(tmp_path: Path):
    _, facts = run("state", tmp_path, """
facts = {"keys": state.num_rows, "subtasks": sorted(set(state["subtask"].to_pylist())),
         "rescaled_subtasks": subtasks, "saved_keys": after.num_rows,
         "saved_subtasks": sorted(set(after["subtask"].to_pylist()))}
""")
    assert facts["keys"] == 20 and set(facts["subtasks"]) <= {0, 1}, facts  # 20 stores, 2 subtasks
    assert facts["rescaled_subtasks"] == 6  # orders+by_store and revenue+out, three subtasks each
    assert facts["saved_keys"] == 20 and facts["saved_subtasks"] == [0, 1, 2], facts
