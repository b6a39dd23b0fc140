"""The settings of a piece (a manifold, a model config, an objective term, a data config), as
configs and the command line read and write them: the ``init`` fields of an attrs class, or the
keyword arguments of a plain class's ``__init__``, each kept as an attribute of the same name.

>>> class Blob:
...     def __init__(self, width: float = 0.1, size: int = 32):
...         self.width, self.size = width, size
>>> [(s.name, s.default) for s in settings_of(Blob)]
[('width', 0.1), ('size', 32)]
>>> setting_values(Blob(width=0.2))
{'width': 0.2, 'size': 32}
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import attrs

__all__ = ["Setting", "NO_DEFAULT", "settings_of", "setting_values"]

#: The default of a setting that has none (it must be given).
NO_DEFAULT = inspect.Parameter.empty


@attrs.frozen
class Setting:
    """One setting of a class.

    Attributes
    ----------
    name : str
    default : object
        Its default value (an attrs ``Factory`` for a field with a factory), or :data:`NO_DEFAULT`.
    annotation : object
        Its type annotation (a type or a string), or None.
    converted : bool
        Whether the class converts the value it is given (then any value it accepts is fine).
    metadata : Mapping
        An attrs field's metadata (empty for a plain class).
    """

    name: str
    default: object = NO_DEFAULT
    annotation: object = None
    converted: bool = False
    metadata: Mapping = attrs.field(factory=dict)


def settings_of(cls: type) -> list[Setting]:
    """The settings of ``cls``: its attrs ``init`` fields, or the keyword arguments of its ``__init__``.

    Raises
    ------
    TypeError
        A plain class whose ``__init__`` takes ``*args``, ``**kwargs`` or positional-only
        arguments: those have no names to write into a config.
    """
    if attrs.has(cls):
        return [Setting(f.name, f.default if f.default is not attrs.NOTHING else NO_DEFAULT, f.type,
                        f.converter is not None, f.metadata)
                for f in attrs.fields(cls) if f.init]
    if cls.__init__ is object.__init__:
        return []
    out = []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            raise TypeError(f"{cls.__name__}: __init__ takes {p}; a config names each setting, so its settings "
                            "must be named arguments (no *args, **kwargs or positional-only ones)")
        out.append(Setting(p.name, p.default, p.annotation if p.annotation is not p.empty else None))
    return out


def setting_values(instance: object) -> dict:
    """``{name: value}`` of every setting of ``instance`` (:func:`settings_of` its class).

    Raises
    ------
    TypeError
        A plain class that does not keep a setting as an attribute of the same name: a config
        could not record it.
    """
    cls = type(instance)
    out = {}
    for s in settings_of(cls):
        if not hasattr(instance, s.name):
            raise TypeError(f"{cls.__name__}: its setting {s.name!r} (an argument of __init__) is not kept as an "
                            f"attribute of the same name (self.{s.name} = {s.name}), so configs, runs and caches "
                            "cannot record it")
        out[s.name] = getattr(instance, s.name)
    return out
