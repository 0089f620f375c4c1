"""Extension points (pluggy hooks) and the plugin manager.

A plugin is any object or module with functions marked ``@hookimpl``,
registered through the ``modelfix`` entry-point group (or, in a test suite,
through ``conftest.py``: the pytest plugin forwards them). Two hooks::

    modelfix_parse_source(text, base_dir)  -> Source | None   (first non-None wins)
    modelfix_adjust_settings(name, settings)                  (edit the dict in place)

A new source scheme is therefore a plugin returning its own :class:`Source`
(see ``modelfix.sources`` for the protocol) for the strings it recognises. The built-in
forms are not a plugin here: :func:`modelfix.sources.parse_source` tries them after every
plugin has declined, so this module imports nothing of modelfix.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .sources import Source

__all__ = ["hookspec", "hookimpl", "plugin_manager"]

hookspec = pluggy.HookspecMarker("modelfix")
hookimpl = pluggy.HookimplMarker("modelfix")


class HookSpecs:
    @hookspec(firstresult=True)
    def modelfix_parse_source(self, text: str, base_dir: Path) -> Source | None:
        """Return a Source for ``text`` if this plugin handles its scheme.

        ``base_dir`` is the lockfile's folder: relative paths are relative to it.
        """

    @hookspec
    def modelfix_adjust_settings(self, name: str, settings: dict[str, Any]) -> None:
        """Adjust the effective load settings of model ``name`` in place."""


@functools.lru_cache(maxsize=1)
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with the installed plugins (entry-point group ``modelfix``).

    One per process, for good: plugins register once, and the pytest plugin adds its bridge to it.
    """
    pm = pluggy.PluginManager("modelfix")
    pm.add_hookspecs(HookSpecs)
    pm.load_setuptools_entrypoints("modelfix")
    return pm
