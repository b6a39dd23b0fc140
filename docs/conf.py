"""Sphinx configuration for manifoldtrain."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import manifoldtrain  # noqa: E402

project = "manifoldtrain"
author = "the manifoldtrain developers"
copyright = "2026, the manifoldtrain developers"
release = manifoldtrain.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
napoleon_custom_sections = [("Implementing a new manifold", "notes_style"), ("Shape convention", "notes_style")]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_mock_imports = []
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = ["_static"]
