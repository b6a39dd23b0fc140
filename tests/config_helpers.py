"""The tests' small cube configs, written as TOML text by one builder (tests import it as
``from config_helpers import cube_toml``)."""

from collections.abc import Mapping

# The manifold every test config shares: a 9x9 cube image, small and quick to compute.
CUBE = {"kind": "cube", "image_size": 9, "extent": 0.5, "sigma": 0.08}

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _value(value) -> str:
    """One TOML value: bools as true/false, strings quoted, lists as [a, b], numbers as repr."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # nan, inf and -inf are TOML floats too
    if isinstance(value, str):
        chars = (_ESCAPES.get(c, c if c >= " " and c != "\x7f" else f"\\u{ord(c):04x}") for c in value)
        return '"' + "".join(chars) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cube_toml: cannot write {value!r} ({type(value).__name__}) as a TOML value")


def _lines(table: Mapping) -> list[str]:
    return [f"{key} = {_value(value)}" for key, value in table.items()]


def cube_toml(*, n_train, n_test, hidden, terms=({"kind": "value"},), data=None, model=None, train=None,
              top=None) -> str:
    """The TOML text of a small experiment on the shared cube manifold.

    Every table's settings are written one ``key = value`` line each, in the order given, so that
    a test can edit the text with ``str.replace`` (``"epochs = 4"``, ``"progress = false"``).

    Parameters
    ----------
    n_train, n_test : int
        ``[data]``'s first two settings.
    hidden : sequence of int or None
        ``[model]``'s ``hidden``, written after its ``kind``; None leaves it out.
    terms : sequence of mapping, optional
        One ``[[objective.terms]]`` table each, in order; the default is one value term.
    data : mapping, optional
        More ``[data]`` settings, written after ``n_train`` and ``n_test``.
    model : mapping, optional
        More ``[model]`` settings, written after ``hidden``; a ``kind`` here replaces the
        default ``"mlp"`` (and stays first).
    train : mapping, optional
        The ``[train]`` settings (default ``epochs = 2``, ``batch_size = 8``); ``progress = false``
        is written last unless ``train`` sets ``progress`` itself.
    top : mapping, optional
        Top-level keys (``model_seed``, ``device``), written before every table.

    Returns
    -------
    str
        The config, ending in a newline; the ``[manifold]`` table is always the cube of
        ``image_size = 9``, ``extent = 0.5``, ``sigma = 0.08``.

    Raises
    ------
    TypeError
        For a setting that is not a bool, int, float, str, or a list or tuple of these.

    Examples
    --------
    >>> import tomllib
    >>> tomllib.loads(cube_toml(n_train=8, n_test=4, hidden=[4]))["train"]
    {'epochs': 2, 'batch_size': 8, 'progress': False}
    """
    model = dict(model or {})
    model_table = {"kind": model.pop("kind", "mlp")}
    if hidden is not None:
        model_table["hidden"] = hidden
    model_table.update(model)
    train_table = dict({"epochs": 2, "batch_size": 8} if train is None else train)
    train_table.setdefault("progress", False)
    blocks = []
    if top:
        blocks.append(_lines(top))
    blocks.append(["[manifold]", *_lines(CUBE)])
    blocks.append(["[data]", *_lines({"n_train": n_train, "n_test": n_test, **(data or {})})])
    blocks.append(["[model]", *_lines(model_table)])
    blocks.extend(["[[objective.terms]]", *_lines(term)] for term in terms)
    blocks.append(["[train]", *_lines(train_table)])
    return "\n\n".join("\n".join(block) for block in blocks) + "\n"
