"""Scorer backends, one file each. Their names are registered in ``common.core.backends.SCORERS``; a
scorer's module (torch, transformers, dlib) is imported only when it is asked for."""

from __future__ import annotations

from typing import Any

from common.core.backends import SCORERS, load_backend

__all__ = ["SCORERS", "get_scorer"]


def get_scorer(name: str, **kwargs: Any) -> Any:
    """Construct the scorer registered as ``name`` (weights are not loaded yet); an unknown name
    is a ``ConfigError`` naming the allowed ones."""
    return load_backend("scorer", name, **kwargs)
