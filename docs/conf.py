"""Sphinx configuration for the deep_ei_jax documentation.

Build (from the repository root, with the ``docs`` extra installed)::

    sphinx-build -W --keep-going -b html docs docs/_build/html
"""
from __future__ import annotations

import os
import sys

# Document the working tree's package, not whatever version is installed elsewhere.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

project = "deep_ei_jax"
author = "deep_ei_jax contributors"
copyright = "deep_ei_jax contributors"  # noqa: A001 (Sphinx's name)

try:
    from deep_ei_jax import __version__ as release
except Exception:  # the API pages will report the import failure themselves
    release = ""
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# `name` in docstrings (Google style, single backticks) reads as inline code.
default_role = "code"

# Google-style docstrings only.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "show-inheritance": False}

myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"deep_ei_jax {release}"


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
    """Leaves out the "Alias for field number k" members of NamedTuples: their fields are
    documented in the class docstring's Attributes section."""
    if what == "class" and (getattr(obj, "__doc__", None) or "").startswith("Alias for field"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
