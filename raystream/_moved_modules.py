"""Module paths of raystream 0.1.0 that moved into folders, kept importable:
`import raystream.nexmark` gives `raystream.connectors.nexmark` itself (one module, under
two names), with a DeprecationWarning that names where it lives now. Nothing is loaded
before such an import, so `import raystream` stays light. (Classes named in the pickles
of old snapshots are found by _runtime/state/moved.py.)"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
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
    """Finds an old module path (after every other finder) and loads the module it moved to."""

    def find_spec(self, name: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]}; import it from there", DeprecationWarning,
                      stacklevel=2)
        return importlib.import_module(MOVED[spec.name])  # its own name and spec stay as they are

    def exec_module(self, module: types.ModuleType) -> None:
        """The module ran when it was imported under its own name."""
