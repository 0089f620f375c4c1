"""pytest fixtures for the local Hub: ``local_hub`` (a started :class:`LocalHub`) and ``hub_env``
(the process environment pointed at it), and :func:`point_at_hub` for a hub that lives longer than
a test. tests/conftest.py loads them (``pytest_plugins = ["modelfix.testing.fixtures"]``); so can
a user's, or import them by name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelfix.testing.hub import LocalHub

__all__ = ["local_hub", "hub_env", "point_at_hub"]


@pytest.fixture
def local_hub() -> Iterator[LocalHub]:
    """A started, empty LocalHub, stopped after the test."""
    with LocalHub() as hub:
        yield hub


@pytest.fixture
def hub_env(local_hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """Point ``huggingface_hub`` at ``local_hub``, in subprocesses and in this process (see :func:`point_at_hub`)."""
    point_at_hub(local_hub, monkeypatch)
    yield local_hub
    from huggingface_hub import HfFileSystem

    HfFileSystem.clear_instance_cache()


def point_at_hub(hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point ``huggingface_hub`` at ``hub`` (a longer-lived one, too) until ``monkeypatch`` undoes it.

    Sets HF_ENDPOINT, HF_HUB_DISABLE_TELEMETRY=1, HF_HUB_DISABLE_XET=1 and removes HF_TOKEN.
    huggingface_hub reads these once, at import, so its already-imported constants are patched
    too (monkeypatch restores them): code that calls it without ``endpoint=`` reaches the hub.
    """
    # Import first, so that monkeypatch's undo restores the real values.
    from huggingface_hub import HfFileSystem, constants, hf_api

    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    # The module-level functions (huggingface_hub.model_info, ...) share one HfApi made at import.
    monkeypatch.setattr(hf_api.api, "endpoint", hub.endpoint)
    # fsspec caches HfFileSystem instances, each holding the endpoint it was made with.
    HfFileSystem.clear_instance_cache()
