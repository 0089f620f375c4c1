"""The core's pluggy hooks as pytest hooks, so that a ``conftest.py`` can implement them.

pytest only collects hooks named ``pytest_*`` from conftest files, and
modelfix's own plugin manager (:mod:`modelfix.hooks`) knows nothing of
pytest's, so each hook exists twice::

    modelfix core                      pytest (conftest.py)
    modelfix_parse_source      <---    pytest_modelfix_parse_source
    modelfix_adjust_settings   <---    pytest_modelfix_adjust_settings

A :class:`HookBridge` registered with modelfix's plugin manager answers each
call of the core by calling the pytest hook of the same name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .hooks import hookimpl

__all__ = ["PytestHookSpecs", "HookBridge"]


class PytestHookSpecs:
    """The core's hooks (``modelfix.hooks.HookSpecs``) as pytest hooks, for conftest.py files."""

    @pytest.hookspec(firstresult=True)
    def pytest_modelfix_parse_source(self, text: str, base_dir: Path) -> Any:
        """Return a ``modelfix.sources.Source`` for ``text`` if this conftest handles its scheme."""

    @pytest.hookspec
    def pytest_modelfix_adjust_settings(self, name: str, settings: dict[str, Any]) -> None:
        """Adjust the effective load settings of model ``name`` in place."""


class HookBridge:
    """Registered with modelfix's plugin manager; answers each hook by asking pytest's."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config

    def register(self) -> None:
        from .hooks import plugin_manager

        plugin_manager().register(self, name=f"modelfix.pytest.{id(self)}")

    def unregister(self) -> None:
        from .hooks import plugin_manager

        plugin_manager().unregister(self)

    @hookimpl
    def modelfix_parse_source(self, text: str, base_dir: Path) -> Any:
        return self._config.hook.pytest_modelfix_parse_source(text=text, base_dir=base_dir)

    @hookimpl
    def modelfix_adjust_settings(self, name: str, settings: dict[str, Any]) -> None:
        self._config.hook.pytest_modelfix_adjust_settings(name=name, settings=settings)
