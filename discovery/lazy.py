"""Lazy re-exports for the subpackages' ``__init__`` (PEP 562), as scikit-image does.

A subpackage names its public API once; a name is imported from its module on first use, so
``import discovery.store`` does not pull in torch because ``discovery.patterns`` needs it.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["attach"]


def attach(package: str, api: dict[str, list[str]]
           ) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """Return ``(__getattr__, __dir__, __all__)`` for *package*.

    Parameters
    ----------
    package : str
        The subpackage's ``__name__``.
    api : dict of str to list of str
        Module name (relative to *package*) -> the public names it provides.  The modules
        themselves are reachable as attributes too.
    """
    where = {name: module for module, names in api.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in api:
            return importlib.import_module(f"{package}.{name}")
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(set(where) | set(api))

    return __getattr__, __dir__, sorted(where)
