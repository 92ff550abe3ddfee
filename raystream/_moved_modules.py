"""Module paths of raystream 0.1.0 that moved into folders, kept importable:
`import raystream.nexmark` gives `raystream.connectors.nexmark` itself (one module, under
two names), with a FutureWarning that names where it lives now (a FutureWarning, shown by
default, because job files are users' code). Nothing is loaded before such an import, so
`import raystream` stays light. (Classes named in the pickles of old snapshots are found
by _runtime/state/moved.py.)"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from typing import Sequence

#: old module -> where it lives now
MOVED: dict[str, str] = {
    "raystream.nexmark": "raystream.connectors.nexmark",
    "raystream.kafka": "raystream.connectors.kafka",
    "raystream.postgres": "raystream.connectors.postgres.sink",
    "raystream.file_sink": "raystream.connectors.files.sink",
    "raystream.compaction": "raystream.connectors.files.compaction",
    "raystream.faults": "raystream.testing.faults",
}


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path (after every other finder) and loads the module it moved to.

    The import system gives the module that `create_module` returns the spec it found, so
    the alias is a throwaway module, and `exec_module` puts the real module in its place in
    `sys.modules`, which is what the import returns: the real module keeps its own name
    and spec (pickles, `importlib.reload` and `find_spec` see only that)."""

    def find_spec(self, name: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # the default: a throwaway module, replaced in exec_module

    def exec_module(self, module: types.ModuleType) -> None:
        warnings.warn(f"{module.__name__} moved to {MOVED[module.__name__]}; import it from there", FutureWarning,
                      stacklevel=2)
        sys.modules[module.__name__] = importlib.import_module(MOVED[module.__name__])
