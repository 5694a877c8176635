"""Finding and fetching trained LoRA adapters for the stages that use them (vl, edit).

An ``adapter`` setting is an adapter id, ``latest`` (the newest adapter of the target) or
``none``. Adapters are stored content-addressed (``adapters`` rows hold the URIs); a stage that
loads one first copies its files into a local folder named by the weights' hash, which the
backends read with ``from_pretrained``-style loaders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.core.errors import ConfigError
from common.store.rows import Adapter
from common.store.storage import Storage

#: the file name each target's weights are written under (the names their loaders look for)
WEIGHTS_NAME = {"edit": "pytorch_lora_weights.safetensors", "vl": "adapter_model.safetensors",
                "character": "pytorch_lora_weights.safetensors", "edit-plus": "pytorch_lora_weights.safetensors"}
CONFIG_NAME = "adapter_config.json"


@dataclass(frozen=True)
class AdapterRef:
    """An adapter as plain data: enough to load it and to record that it was used."""

    id: int
    target: str
    sha256: str
    base_model: str
    weights_uri: str
    config_uri: str

    @property
    def weights_name(self) -> str:
        return WEIGHTS_NAME[self.target]


def resolve_adapter(session: Session, target: str, choice: str) -> AdapterRef | None:
    """The adapter ``choice`` names for ``target`` (None for ``none``); a missing one, or one
    trained for another target, is a settings error naming the setting."""

    if choice == "none":
        return None
    setting = "edit.plus_adapter (SYNTHPIPE_EDIT__PLUS_ADAPTER)" if target == "edit-plus" \
        else f"{target}.adapter (SYNTHPIPE_{target.upper()}__ADAPTER)"
    if choice == "latest":
        row = session.scalars(select(Adapter).where(Adapter.target == target).order_by(Adapter.id.desc())
                              .limit(1)).first()
        if row is None:
            raise ConfigError(f"{setting} is latest but no {target} adapter has been trained yet")
    else:
        row = session.get(Adapter, int(choice))
        if row is None:
            raise ConfigError(f"{setting}: adapter {choice} does not exist (see synthpipe adapters list)")
        if row.target != target:
            raise ConfigError(f"{setting}: adapter {choice} was trained for {row.target}, not {target}")
    return AdapterRef(row.id, row.target, row.sha256, row.base_model, row.weights_uri, row.config_uri)


def materialize(ref: AdapterRef, storage: Storage, cache_dir: Path) -> Path:
    """A local folder holding the adapter's files (copied from storage once, then reused)."""
    folder = cache_dir / "adapters" / ref.sha256
    weights = folder / ref.weights_name
    if weights.is_file() and (folder / CONFIG_NAME).is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name, uri in ((CONFIG_NAME, ref.config_uri), (ref.weights_name, ref.weights_uri)):
        tmp = folder / f".{name}.part"
        tmp.write_bytes(storage.get(uri))
        tmp.replace(folder / name)  # a reader never sees half a file
    return folder
