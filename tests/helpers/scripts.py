"""Scripts of batches and watermarks that operator tests feed a step without Ray."""
from __future__ import annotations

from typing import Any


def sorted_marks(script: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The script with its watermarks ("wm", mark) never going back (an operator ignores
    one that does, but keep the script plain)."""
    out, mark = [], -1
    for kind, item in script:
        if kind == "wm":
            mark = max(mark, item)
            item = mark
        out.append((kind, item))
    return out
