"""The notebooks in notebooks/ run top to bottom, as a user would run them, on a fresh
kernel each (nbclient on ipykernel); their own cells assert what they show. The
repository keeps them with outputs stripped."""
import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

pytestmark = pytest.mark.extended


def test_the_three_notebooks_exist_with_outputs_stripped():
    assert [p.stem for p in NOTEBOOKS] == ["exactly_once", "quickstart", "state"]
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path):
    # The notebook's folder beside jobs/, as in the repository; what it writes stays in tmp_path.
    (tmp_path / "notebooks").mkdir()
    os.symlink(ROOT / "jobs", tmp_path / "jobs")
    shutil.copy(path, tmp_path / "notebooks" / path.name)
    book = nbformat.read(path, as_version=4)
    client = NotebookClient(book, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path / "notebooks")}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if a cell fails
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    if path.stem == "exactly_once":  # the plot was drawn
        assert any("image/png" in o.get("data", {}) for c in book.cells if c.cell_type == "code" for o in c.outputs)
