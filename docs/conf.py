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
    # Maths offline: MathJax 3 from the pip package sphinx-mathjax-offline (the docs extra),
    # copied into _build/html/_static/mathjax; pages load it from there, never from a CDN.
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
]
mathjax_path = "mathjax/tex-chtml.js"
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


# ---------------------------------------------------------------- signatures without noise
# autodoc prints defaults by repr: an attrs factory as ``NOTHING``, a default config as its
# full repr, a function as ``<function taylor_rows at ...>``, and an nn.Module subclass
# without its own __init__ as ``(*args, **kwargs)``. Rewrite those to what a caller writes.

import inspect  # noqa: E402

import attrs  # noqa: E402
from torch import nn  # noqa: E402


class _Shown:
    """A default shown as the given text."""

    def __init__(self, text):
        self.text = text

    def __repr__(self):
        return self.text


def _shown_default(value, factory=None):
    if isinstance(factory, attrs.Factory) and not factory.takes_self:
        f = factory.factory
        if f in (dict, list, tuple, set):
            return _Shown(repr(f()))
        if isinstance(f, type):
            return _Shown(f"{f.__name__}()")
        return _Shown("<factory>")
    if inspect.isroutine(value):
        return _Shown(getattr(value, "__name__", repr(value)))
    if type(value) in (tuple, list):
        items = [repr(_shown_default(v)) for v in value]
        text = ", ".join(items) + ("," if type(value) is tuple and len(items) == 1 else "")
        return _Shown(f"({text})" if type(value) is tuple else f"[{text}]")
    if attrs.has(type(value)):
        try:
            if value == type(value)():
                return _Shown(f"{type(value).__name__}()")
        except Exception:  # a class without defaults for every field
            pass
    return value


def _clean_signature(app, what, name, obj, options, signature, return_annotation):
    if not name.startswith("manifoldtrain") or not signature:
        return None  # no signature shown (an abstract base, a protocol): nothing to clean
    if what == "class" and isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__init__ is nn.Module.__init__:
        return "()", None
    if what == "class" and obj.__init__ is object.__init__:
        return None  # autodoc's own "()" (an abstract base: subclassed, not called)
    target = obj.__init__ if what == "class" else obj
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    factories = {}
    if what == "class" and attrs.has(obj):
        factories = {f.name: f.default for f in attrs.fields(obj) if isinstance(f.default, attrs.Factory)}
    params = []
    for p in sig.parameters.values():
        if what == "class" and p.name == "self":
            continue
        default = p.default
        if default is not inspect.Parameter.empty or p.name in factories:
            default = _shown_default(default, factories.get(p.name))
        params.append(p.replace(default=default, annotation=inspect.Parameter.empty))
    if what in ("method", "classmethod") and params and params[0].name in ("self", "cls"):
        params = params[1:]
    text = str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))
    return text, return_annotation


def setup(app):
    app.connect("autodoc-process-signature", _clean_signature)
