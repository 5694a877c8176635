"""Text-to-image backends. Their names are registered in ``common.core.backends.GENERATE_BACKENDS``."""

from __future__ import annotations

from typing import Any

from common.core.backends import load_backend


def get_backend(name: str, **kwargs: Any) -> Any:
    """Construct the generate backend registered as ``name`` (weights are not loaded yet)."""
    return load_backend("generate", name, **kwargs)
