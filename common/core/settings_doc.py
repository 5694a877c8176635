"""The settings reference, generated from the settings model so it cannot drift from it.

    python -m common.core.settings_doc > docs/SETTINGS.md    # a test checks the file is current
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from common.core.backends import EDIT_BACKENDS, SCHEDULERS, VL_BACKENDS
from common.core.settings import ENV_PREFIX, Settings

HEADER = """# Settings reference

Every setting, its environment variable, its `synthpipe.toml` key, default and meaning.
Generated from `common/core/settings.py` by `python -m common.core.settings_doc > docs/SETTINGS.md`.
Names of backends, schedulers, devices and prompt versions are checked at start-up.

| environment variable | `synthpipe.toml` | default | allowed | meaning |
|---|---|---|---|---|
"""


def _allowed(field: FieldInfo) -> str:
    annotation = field.annotation
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return ", ".join(f"`{a}`" for a in args)
    if typing.get_origin(annotation) is list and args and typing.get_origin(args[0]) is typing.Literal:
        return "list of " + ", ".join(f"`{a}`" for a in typing.get_args(args[0]))
    bounds = []
    for meta in field.metadata:
        for op, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            value = getattr(meta, op, None)
            if value is not None:
                bounds.append(f"{sign} {value}")
    return " and ".join(bounds)


def _default(field: FieldInfo) -> str:
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, Path):
        return f"`{value}`"
    if isinstance(value, list):
        if value and typing.get_origin(typing.get_args(field.annotation)[0] if typing.get_args(field.annotation) else None) is not typing.Literal:
            return f"`{','.join(map(str, value))}`"
        return "all" if value else "none"
    return f"`{value}`"


def _names() -> dict[str, str]:
    """Settings whose allowed values are the names of a registry (checked at start-up)."""

    def names(registry: Any) -> str:
        return ", ".join(f"`{n}`" for n in sorted(registry))

    edit = names(EDIT_BACKENDS)
    return {"vl.backend": names(VL_BACKENDS), "edit.backend": edit, "edit.backend_tryon": edit,
            "edit.backend_enrich": edit, "edit.scheduler": names(SCHEDULERS),
            "vl.device": "`auto`, `cpu`, `mps`, `cuda`, `cuda:N`", "edit.device": "`auto`, `cpu`, `mps`, `cuda`, `cuda:N`"}


def _rows(prefix: str, toml_section: str | None, fields: dict[str, FieldInfo]) -> list[str]:
    rows = []
    registry_names = _names()
    for name, field in fields.items():
        if isinstance(field.default, BaseModel):  # a table inside a section: [score.tryon]
            rows += _rows(f"{prefix}{name.upper()}__", f"{toml_section}.{name}", type(field.default).model_fields)
            continue
        env = f"{prefix}{name.upper()}"
        toml = f"[{toml_section}] {name}" if toml_section else name
        allowed = registry_names.get(f"{toml_section}.{name}") or _allowed(field)
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{env}` | `{toml}` | {_default(field)} | {allowed} | {meaning} |")
    return rows


def settings_reference() -> str:
    rows: list[str] = []
    top = {n: f for n, f in Settings.model_fields.items() if not isinstance(f.default, BaseModel)}
    rows += _rows(ENV_PREFIX, None, top)
    for name, field in Settings.model_fields.items():
        if isinstance(field.default, BaseModel):
            section: Any = type(field.default)
            rows += _rows(f"{ENV_PREFIX}{name.upper()}__", name, section.model_fields)
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(settings_reference(), end="")
