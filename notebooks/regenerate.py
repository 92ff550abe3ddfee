"""Run the notebooks of this folder and store them with the outputs of that run.

    python notebooks/regenerate.py                 # all of them
    python notebooks/regenerate.py quickstart      # some, by name

Each notebook runs top to bottom on a fresh kernel (nbclient on ipykernel, as Jupyter
would), with the raystream of this checkout, in a temporary directory laid out like the
repository (`notebooks/` beside `jobs/`), so what it writes stays out of the repository.
The executed notebook replaces the stored one, with what would change on every run
without meaning anything left out: cell timings and the kernel's version details. Paths
under the temporary directory are written relative to the notebook's folder; a notebook
whose outputs still name a path of this machine (the checkout, the home or temporary
directory) is not stored, and the script exits with 1. The checks of what the notebooks
show are in tests/notebooks, which run them again.
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMEOUT = 600  # seconds per cell: exactly_once runs the billing job twice under kills


def execute(path: Path, timeout: float = TIMEOUT) -> nbformat.NotebookNode:
    """`path` executed on a fresh kernel whose working directory is `notebooks/` of a
    temporary copy of the layout, with outputs under it made relative to it."""
    book = nbformat.read(path, as_version=4)
    stored_metadata = copy.deepcopy(book.metadata)  # the kernel adds its version details to book.metadata
    with tempfile.TemporaryDirectory(prefix="raystream-notebooks-") as tmp:
        work = Path(tmp).resolve()
        cwd = work / "notebooks"
        cwd.mkdir()
        (work / "jobs").symlink_to(ROOT / "jobs", target_is_directory=True)  # exactly_once runs jobs/billing.py
        client = NotebookClient(book, timeout=timeout, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": str(cwd)}})
        client.execute()  # raises CellExecutionError, with the cell and its traceback, if a cell fails
    book.metadata = stored_metadata  # not the kernel's version details, which differ between machines
    for cell in book.cells:
        if cell.cell_type == "code":
            cell.metadata.pop("execution", None)
            for output in cell.outputs:
                _relative(output, str(work), cwd)
    return book


def _relative(output: nbformat.NotebookNode, tmp: str, cwd: Path) -> None:
    """Rewrite paths under `tmp` in `output`'s text as paths relative to `cwd`."""
    pattern = re.compile(re.escape(tmp) + r"[^\s'\"\])]*")

    def rewrite(text: str) -> str:
        return pattern.sub(lambda m: os.path.relpath(m.group(0), cwd), text)

    if "text" in output:
        output.text = rewrite(output.text)
    for mime, value in output.get("data", {}).items():
        if mime.startswith("text/") and isinstance(value, str):
            output.data[mime] = rewrite(value)
    if "traceback" in output:
        output.traceback = [rewrite(line) for line in output.traceback]


def machine_paths(book: nbformat.NotebookNode) -> list[str]:
    """The paths of this machine (checkout, home and temporary directory) that the
    notebook's outputs name."""
    places = {str(ROOT), str(Path.home()), tempfile.gettempdir(), os.path.realpath(tempfile.gettempdir())}
    found = []
    for cell in book.cells:
        for output in cell.get("outputs", []):
            texts = [output.get("text", ""), *output.get("traceback", [])]
            texts += [v for k, v in output.get("data", {}).items() if k.startswith("text/") and isinstance(v, str)]
            found += [f"cell {cell.id}: {place}" for place in places for text in texts if place in text]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks to regenerate (file names without .ipynb); all if none")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # not nbclient's line per notebook
    logger.setLevel(logging.INFO)
    paths = sorted(HERE.glob("*.ipynb"))
    if args.names:
        unknown = set(args.names) - {p.stem for p in paths}
        if unknown:
            parser.error(f"no such notebook: {', '.join(sorted(unknown))} (there are {', '.join(p.stem for p in paths)})")
        paths = [p for p in paths if p.stem in args.names]
    # The kernel imports raystream from this checkout, whatever is installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    failed = 0
    for path in paths:
        started = time.monotonic()
        logger.info("running %s", path.name)
        book = execute(path)
        leaked = machine_paths(book)
        if leaked:
            logger.error("%s not stored: its outputs name paths of this machine:\n  %s", path.name, "\n  ".join(leaked))
            failed += 1
            continue
        nbformat.write(book, path)
        logger.info("stored %s (%.0fs)", path.name, time.monotonic() - started)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
