"""Reading an item set and its images for a model stage (both VL and edit use this)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.core.errors import ImageRejected, InputError
from common.core.settings import ImageSettings
from common.media.images import load_image
from common.store.rows import ItemSet, ItemSetAsset
from common.store.storage import Storage


@dataclass(frozen=True)
class Member:
    asset_id: int
    role: str
    uri: str
    sha256: str


@dataclass(frozen=True)
class ItemSetView:
    """An item set as plain data, usable outside the session that read it."""

    id: int
    key: str
    recipe: str
    members: tuple[Member, ...]
    keywords: dict[str, Any]
    variation: dict[str, Any] | None
    seed: int | None

    @property
    def primary(self) -> Member:
        """The person (tryon) or character (enrich) photo."""
        return self.members[0]

    @property
    def garments(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.role == "garment")


def read_item_set(session: Session, item_set_id: int) -> ItemSetView:
    item = session.get(ItemSet, item_set_id)
    if item is None:
        raise InputError(f"item set {item_set_id} does not exist")
    members = tuple(Member(m.asset_id, m.role, m.asset.uri, m.asset.sha256) for m in item.members)
    if not members:
        raise InputError(f"item set {item.key} has no photos")
    return ItemSetView(item.id, item.key, item.recipe, members, dict(item.keywords or {}),
                       dict(item.variation) if item.variation else None, item.seed)


def load_member_images(storage: Storage, members: tuple[Member, ...], limits: ImageSettings) -> list[Image.Image]:
    """The members' images through the safe loader; a bad one raises ``InputError`` naming it,
    with the loader's own reason code (``image.corrupt``, ``image.not_an_image``, …) so a job that
    fails on a damaged stored image is counted by that reason, not as a generic bad input."""
    images = []
    for m in members:
        try:
            data = storage.get(m.uri)
        except FileNotFoundError:
            raise InputError(f"{m.role} photo asset {m.asset_id}: stored object missing at {m.uri}") from None
        try:
            images.append(load_image(data, limits).image)
        except ImageRejected as exc:
            raise InputError(f"{m.role} photo asset {m.asset_id} ({m.uri}): {exc.reason}", code=exc.code) from None
    return images


def ensure_item_set(session: Session, key: str, recipe: str, members: list[tuple[int, str]]) -> int:
    """The id of the item set ``key`` (``members``: (asset id, role) in order), made unless it
    exists; a concurrent maker of the same key wins the race and its id is returned."""
    existing = session.scalar(select(ItemSet.id).where(ItemSet.key == key))
    if existing is not None:
        return int(existing)
    item = ItemSet(key=key, recipe=recipe, keywords={}, variation=None, seed=None)
    item.members = [ItemSetAsset(position=i, asset_id=a, role=r) for i, (a, r) in enumerate(members)]
    try:
        with session.begin_nested():
            session.add(item)
            session.flush()
    except IntegrityError:
        found = session.scalar(select(ItemSet.id).where(ItemSet.key == key))
        if found is None:
            raise
        return int(found)
    return int(item.id)
