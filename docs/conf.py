"""Sphinx configuration of the docs site: `python -m sphinx -W --keep-going docs DIR`
builds it (CI does, so a broken link or a reference to a missing name fails)."""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

from raystream import __version__  # noqa: E402

project = "raystream"
copyright = "raystream authors"
release = version = __version__
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "bench/*.json"]
myst_heading_anchors = 3
default_role = "code"  # `name` in a docstring is code, as it is in Markdown
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
html_theme = "furo"
html_title = f"raystream {__version__}"
nitpicky = True  # a reference to a name that is not documented fails the build
# Types of other libraries (no intersphinx: the build machines reach package registries
# only) and the runtime's plain data, which the reference does not document.
nitpick_ignore_regex = [
    ("py:class", r"(datetime|abc|enum|typing|collections\.abc|pyarrow(\.lib)?|pa|numpy|np)\..*"),
    ("py:class", r"raystream\.(graph\.(StepTable|JobGraph)|windows\.Assigner|retry\.T)"),
]
