"""The keyword sampler: realistic context (occasion, season, setting, lighting, style) per set."""

from __future__ import annotations

import functools
import random
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.core.errors import ConfigError

DEFAULT_FILE = Path(__file__).resolve().parent / "data" / "keywords.yaml"
Axes = dict[str, list[str]]


class KeywordFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    context: dict[str, list[str]] = Field(min_length=1)
    enrich: dict[str, list[str]] = Field(min_length=1)


@functools.cache
def load_keywords(path: Path | None = None) -> KeywordFile:
    """The keyword file (default: the one shipped); errors name the file and the key."""
    path = path or DEFAULT_FILE
    try:
        raw = yaml.safe_load(path.read_text())
        kw = KeywordFile.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"pairing.keywords_file: cannot read {path}: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"pairing.keywords_file {path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    for section in (kw.context, kw.enrich):
        for axis, values in section.items():
            if not values:
                raise ConfigError(f"pairing.keywords_file {path}: axis {axis!r} has no values")
    return kw


def draw(axes: Axes, rng: random.Random) -> dict[str, str]:
    """One value per axis."""
    return {axis: rng.choice(values) for axis, values in axes.items()}


def draw_distinct(axes: Axes, n: int, rng: random.Random) -> list[dict[str, str]]:
    """``n`` different combinations (fewer if the axes cannot make that many)."""
    total = 1
    for values in axes.values():
        total *= len(values)
    seen: set[tuple[str, ...]] = set()
    out: list[dict[str, str]] = []
    while len(out) < min(n, total):
        combo = draw(axes, rng)
        key = tuple(combo.values())
        if key not in seen:
            seen.add(key)
            out.append(combo)
    return out
