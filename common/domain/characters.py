"""Naming a stored character photo and its character adapters (``generate``, ``train character``)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.core.errors import InputError
from common.store.rows import Adapter, Asset

#: the adapters target of character LoRAs
TARGET = "character"


def resolve_character(session: Session, ref: str) -> Asset:
    """The stored character photo ``ref`` names: an asset id, a sha256, or a source path."""
    ref = ref.strip()
    asset: Asset | None = None
    if ref.isdigit():
        asset = session.get(Asset, int(ref))
    elif len(ref) == 64 and all(c in "0123456789abcdef" for c in ref.lower()):
        asset = session.scalars(select(Asset).where(Asset.sha256 == ref.lower())).first()
    else:
        paths = {ref, str(Path(ref).expanduser().resolve())}
        asset = session.scalars(select(Asset).where(Asset.source_path.in_(paths)).order_by(Asset.id)).first()
    if asset is None:
        raise InputError(f"no stored photo is {ref!r} (give an asset id, a sha256 or the path it was ingested from)",
                         code="character.unknown")
    if asset.role != "character":
        raise InputError(f"asset {asset.id} is a {asset.role} photo, not a character photo "
                         "(ingest it with --role character)", code="character.wrong_role")
    return asset


def character_adapters(session: Session, asset_id: int) -> list[Adapter]:
    """Character adapters trained for ``asset_id``, newest first."""
    rows = session.scalars(select(Adapter).where(Adapter.target == TARGET).order_by(Adapter.id.desc()))
    return [a for a in rows if int((a.hyperparameters or {}).get("character_asset_id", -1)) == asset_id]


def resolve_character_adapter(session: Session, asset_id: int, choice: str) -> Adapter | None:
    """The adapter ``choice`` (an id, ``latest`` or ``none``) names for the character; ``latest``
    is None when the character has none yet. A wrong id is an input error."""
    if choice == "none":
        return None
    if choice == "latest":
        found = character_adapters(session, asset_id)
        return found[0] if found else None
    if not choice.isdigit():
        raise InputError(f"--adapter must be an adapter id, latest or none (got {choice!r})")
    row = session.get(Adapter, int(choice))
    if row is None:
        raise InputError(f"adapter {choice} does not exist (see synthpipe adapters list)", code="adapter.unknown")
    if row.target != TARGET:
        raise InputError(f"adapter {choice} was trained for {row.target}, not for a character",
                         code="adapter.wrong_target")
    return row
