"""Map source file paths to module names, on the node whose files they are.

Profilers see file paths; filters and short names want modules. A path is
matched against the ``__file__`` of every imported module first, then against
the longest ``sys.path`` entry it lies under.
"""

from __future__ import annotations

import os
import sys

_FROZEN = "<frozen "


class ModuleNames:
    """Cached ``filename -> (module, short path)`` for this process.

    ``module`` is the dotted name (``numpy.core.fromnumeric``); the short path is
    the file relative to its import root (``numpy/core/fromnumeric.py``).
    """

    def __init__(self) -> None:
        self._cache: dict[str, tuple[str, str]] = {}
        self._modules_seen = -1
        self._by_file: dict[str, str] = {}
        self._by_real: dict[str, str] | None = None  # by resolved path, made when needed
        self._roots: list[str] = []

    def __call__(self, filename: str) -> tuple[str, str]:
        """The module name and short path of ``filename``."""
        found = self._cache.get(filename)
        if found is None:
            if len(sys.modules) != self._modules_seen:
                self._refresh()
            found = self._cache[filename] = self._lookup(filename)
        return found

    def _refresh(self) -> None:
        self._modules_seen = len(sys.modules)
        self._by_file = {}
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None)
            if isinstance(path, str) and path.endswith(".py"):
                self._by_file[os.path.abspath(path)] = name
        self._by_real = None
        roots = {os.path.abspath(p or os.curdir) for p in sys.path if isinstance(p, str)}
        self._roots = sorted(roots, key=len, reverse=True)

    def _lookup(self, filename: str) -> tuple[str, str]:
        if filename.startswith(_FROZEN) and filename.endswith(">"):
            return filename[len(_FROZEN):-1], filename
        if filename.startswith("<") or not filename:
            return filename or "<unknown>", filename or "<unknown>"
        # code objects and modules mostly agree on the path as written; symlinks need resolving
        path = os.path.abspath(filename)
        name = self._by_file.get(path)
        if name is None:
            if self._by_real is None:
                self._by_real = {os.path.realpath(p): n for p, n in self._by_file.items()}
            path = os.path.realpath(filename)
            name = self._by_real.get(path)
        if name is not None:
            parts = 1 if name == "__main__" else \
                name.count(".") + 1 + (os.path.basename(path) == "__init__.py")
            return name, "/".join(path.split(os.sep)[-parts:])
        for candidate in (os.path.abspath(filename), path):
            for root in self._roots:
                if candidate.startswith(root + os.sep):
                    relative = candidate[len(root) + 1:]
                    return _dotted(relative), relative.replace(os.sep, "/")
        base = os.path.basename(path)
        return _dotted(base), base


def _dotted(relative: str) -> str:
    stem = relative[:-3] if relative.endswith(".py") else relative
    if stem.endswith(os.sep + "__init__"):
        stem = stem[: -len("__init__") - 1]
    return stem.replace(os.sep, ".")


def root_module(module: str) -> str:
    """The top-level package of a dotted module name."""
    return module.split(".", 1)[0]


def module_filter(include: tuple | list | str = (), exclude: tuple | list | str = ()):
    """A predicate on module names: kept when under one of ``include`` (all when
    empty) and under none of ``exclude``. ``'numpy'`` covers ``numpy.linalg``."""
    include, exclude = _names("include", include), _names("exclude", exclude)

    def under(module: str, names: tuple) -> bool:
        return any(module == n or module.startswith(n + ".") for n in names)

    def keep(module: str) -> bool:
        return (not include or under(module, include)) and not under(module, exclude)
    return keep


def _names(what: str, names) -> tuple:
    if isinstance(names, str):
        names = (names,)
    names = tuple(names or ())
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{what} takes module names such as 'numpy', not {name!r}")
    return names
