"""Registries of plugins: names -> factories, filled by the package that defines them and by other installed
packages through an entry-point group (a lab's own package adds a simulated subject without touching this one).

A factory is looked up by name; ``module:attr`` (a module importable here, or a ``.py`` file in the working
folder) works for anything not registered.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any


class RegistryError(LookupError):
    """A name the registry does not know, or a plugin that does not load; the message says which and why."""


class Registry:
    """Named factories of one kind of plugin (``what``: how messages name it, e.g. "subject").

    ``group`` is the entry-point group other packages register into (``[project.entry-points."<group>"]``,
    ``NAME = "module:attr"``); ``aliases`` maps older names (e.g. former ``module:attr`` paths) to current ones.
    """

    def __init__(self, what: str, group: str | None = None, aliases: dict[str, str] | None = None) -> None:
        self.what = what
        self.group = group
        self.aliases = dict(aliases or {})
        self._builtin: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register a factory under ``name``."""

        def add(factory: Callable[..., Any]) -> Callable[..., Any]:
            self._builtin[name] = factory
            return factory

        return add

    def _installed(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=self.group)} if self.group else {}

    def names(self) -> list[str]:
        """Every registered name: this package's, then other installed packages' (entry points)."""
        return list(dict.fromkeys([*self._builtin, *self._installed()]))

    def get(self, spec: str) -> Callable[..., Any]:
        """The factory named ``spec`` (a registered name, an alias, or ``module:attr``)."""
        name = self.aliases.get(spec, spec)
        if name in self._builtin:
            return self._builtin[name]
        installed = self._installed()
        if name in installed:
            try:
                return installed[name].load()
            except Exception as exc:  # a broken plugin: say which package's entry point
                raise RegistryError(f"{self.what} {name!r} (entry point {installed[name].value!r}) does not load: "
                                    f"{type(exc).__name__}: {exc}") from None  # fmt: skip
        if ":" in name:
            return import_attr(name, self.what)
        known = ", ".join(self.names()) or "none"
        raise RegistryError(f"unknown {self.what} {spec!r}: give one of {known}, or module:attr")


def import_attr(spec: str, what: str = "object") -> Any:
    """``module:attr`` imported (the module may also be a ``.py`` file in the working folder)."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise RegistryError(f"{what} must be a registered name or module:attr, got {spec!r}")
    if os.getcwd() not in sys.path:  # as `python -m` would: a console script does not search the working folder
        sys.path.append(os.getcwd())
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        where = "an installed module, or a file in the working folder"
        raise RegistryError(f"cannot load {spec!r}: {exc} ({where})") from None
