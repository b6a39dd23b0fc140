"""The :class:`~manifoldtrain.registry.Registry` mechanism (classes of one kind by name), in the
base layer so that a module that owns a table of names (:data:`manifoldtrain.nn.ACTIVATIONS`)
needs nothing above it. The tables themselves are in :mod:`manifoldtrain.registry`."""

from __future__ import annotations

import importlib

from manifoldtrain._plain import qualified_name

__all__ = ["Registry"]


class Registry:
    """Classes of one kind by name.

    Parameters
    ----------
    what : str
        What the classes are (for messages), e.g. ``"manifold"``.
    base : type or None
        Every class must subclass it (``None``: any class).
    """

    def __init__(self, what: str, base: type | None = None):
        self.what = what
        self.base = base
        self._classes: dict[str, type] = {}

    def register(self, name: str, cls: type) -> type:
        """Give ``cls`` the short ``name``; returns ``cls``."""
        if not isinstance(name, str) or not name or ":" in name:
            raise ValueError(f"name: expected a non-empty {self.what} name without ':', got {name!r}")
        self._check_class(cls, name)
        if name in self._classes and self._classes[name] is not cls:
            raise ValueError(f"name: {name!r} is already the {self.what} {qualified_name(self._classes[name])}")
        self._classes[name] = cls
        return cls

    def _check_class(self, cls: object, kind: str) -> type:
        if not isinstance(cls, type) or (self.base is not None and not issubclass(cls, self.base)):
            base = f"a subclass of {self.base.__name__}" if self.base is not None else "a class"
            raise TypeError(f"kind: {kind!r} is not {base} (got {cls!r})")
        return cls

    @property
    def names(self) -> list[str]:
        """The registered short names, sorted."""
        return sorted(self._classes)

    def get(self, kind: object) -> type:
        """The class called ``kind``: a short name, or ``"package.module:ClassName"``."""
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"kind: expected one of {self.names} or 'package.module:ClassName', got {kind!r}")
        if kind in self._classes:
            return self._classes[kind]
        if ":" not in kind:
            raise ValueError(f"kind: unknown {self.what} {kind!r}; expected one of {self.names} or 'package.module:ClassName'")
        module_name, _, attr = kind.partition(":")
        try:
            obj = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"kind: cannot import module {module_name!r} for {self.what} {kind!r} ({err}); the "
                             "command line looks in the current folder and on PYTHONPATH (export PYTHONPATH=/its/folder)"
                             ) from None
        except Exception as err:  # the module itself is broken: say where, not a traceback
            where = f" ({err.filename}, line {err.lineno})" if isinstance(err, SyntaxError) else ""
            raise ValueError(f"kind: importing module {module_name!r} for {self.what} {kind!r} failed{where}: "
                             f"{type(err).__name__}: {err}") from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ValueError(f"kind: module {module_name!r} has no {attr!r} (for {self.what} {kind!r})")
            obj = getattr(obj, part)
        return self._check_class(obj, kind)

    def name_of(self, cls_or_instance: object) -> str:
        """The short name of a class (or of an instance's class), else its import path."""
        cls = cls_or_instance if isinstance(cls_or_instance, type) else type(cls_or_instance)
        for name, known in self._classes.items():
            if known is cls:
                return name
        return qualified_name(cls)
