"""VL prompt templates: versioned files (common/core/data/prompts), filled with an item set's keywords
and variation. They live in common because settings check them against the keyword file."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from common.core.errors import ConfigError

PROMPTS_DIR = Path(__file__).resolve().parent / "data" / "prompts"


@dataclass(frozen=True)
class PromptTemplate:
    recipe: str
    version: str
    system: str
    user: str

    def render(self, **values: Any) -> tuple[str, str]:
        """(system prompt, user prompt) with ``values`` filled in."""
        try:
            return self.system.strip(), self.user.format(**values).strip()
        except KeyError as exc:
            raise ConfigError(f"prompt {self.recipe}.{self.version} needs a value for {exc}") from None


@functools.cache
def load_template(recipe: str, version: str) -> PromptTemplate:
    path = PROMPTS_DIR / f"{recipe}.{version}.yaml"
    if not path.is_file():
        have = sorted(p.name.removesuffix(".yaml") for p in PROMPTS_DIR.glob("*.yaml"))
        raise ConfigError(f"vl.prompt_version: no template {path.name} (have: {', '.join(have)})")
    raw = yaml.safe_load(path.read_text())
    if raw.get("version") != version:
        raise ConfigError(f"{path}: version field {raw.get('version')!r} does not match the file name")
    return PromptTemplate(recipe=recipe, version=version, system=raw["system"], user=raw["user"])


def render_for(recipe: str, version: str, *, keywords: dict[str, str] | None,
               variation: dict[str, str] | None, n_images: int) -> tuple[str, str]:
    values: dict[str, Any] = {"n_images": n_images, "n_garments": max(0, n_images - 1)}
    values.update(keywords or {})
    values.update(variation or {})
    return load_template(recipe, version).render(**values)
