"""Registering images as assets: safe load, dedup, content-addressed store, provenance row."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.errors import ImageRejected
from common.images import LoadedImage, colour_distance, hamming, load_image
from common.models import ROLES, Asset
from common.settings import ImageSettings
from common.storage import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Provenance:
    """Where an image came from; carried into every dataset row made from it."""

    source_path: str | None = None
    source_url: str | None = None
    page_url: str | None = None
    site: str | None = None
    category: str | None = None
    licence: str | None = None
    fetched_at: dt.datetime | None = None


@dataclass(frozen=True)
class Registration:
    status: Literal["registered", "duplicate", "near_duplicate", "rejected"]
    asset_id: int | None = None
    reason: str | None = None


def register_image_bytes(
    session: Session,
    data: bytes,
    *,
    role: str,
    provenance: Provenance,
    storage: Storage,
    limits: ImageSettings | None = None,
    phash_threshold: int | None = None,
    colour_tolerance: int = 24,
) -> Registration:
    """Store ``data`` as a new asset unless it is refused or already stored.

    Exact duplicates (same sha256) are never stored twice; with ``phash_threshold``, neither
    are near duplicates: difference hash within that Hamming distance of a stored asset *and*
    colours within ``colour_tolerance`` (so colour variants of one product are both kept).
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (allowed: {', '.join(ROLES)})")
    try:
        loaded = load_image(data, limits)
    except ImageRejected as exc:
        return Registration("rejected", reason=exc.reason)
    existing = session.scalar(select(Asset.id).where(Asset.sha256 == loaded.sha256))
    if existing is not None:
        return Registration("duplicate", asset_id=existing, reason="same content as a stored asset")
    if phash_threshold is not None:
        near = find_near_duplicate(session, loaded, phash_threshold, colour_tolerance)
        if near is not None:
            return Registration("near_duplicate", asset_id=near,
                                reason=f"within {phash_threshold} bits of asset {near}")
    stored = storage.put(data, loaded.extension)
    return _insert(session, loaded, stored.uri, role, provenance)


def _insert(session: Session, loaded: LoadedImage, uri: str, role: str, provenance: Provenance) -> Registration:
    asset = Asset(
        sha256=loaded.sha256, phash=loaded.phash, colour=loaded.colour, size_bytes=loaded.size_bytes, format=loaded.format,
        width=loaded.width, height=loaded.height, role=role, uri=uri,
        source_path=provenance.source_path, source_url=provenance.source_url,
        page_url=provenance.page_url, site=provenance.site, category=provenance.category,
        licence=provenance.licence, fetched_at=provenance.fetched_at,
    )
    try:
        with session.begin_nested():  # another process may register the same bytes meanwhile
            session.add(asset)
            session.flush()
    except IntegrityError:
        existing = session.scalar(select(Asset.id).where(Asset.sha256 == loaded.sha256))
        return Registration("duplicate", asset_id=existing, reason="same content as a stored asset")
    return Registration("registered", asset_id=asset.id)


def find_near_duplicate(session: Session, loaded: LoadedImage, threshold: int, colour_tolerance: int) -> int | None:
    """The id of a stored asset that looks the same (shape and colour), if any.

    A linear scan over stored hashes: fine to a few hundred thousand assets.
    """
    for asset_id, phash, colour in session.execute(select(Asset.id, Asset.phash, Asset.colour)):
        if hamming(loaded.phash, phash) <= threshold and (
            colour is None or colour_distance(loaded.colour, colour) <= colour_tolerance
        ):
            return int(asset_id)
    return None


def asset_counts(session: Session) -> dict[str, int]:
    out = dict.fromkeys(ROLES, 0)
    for role, n in session.execute(select(Asset.role, func.count()).group_by(Asset.role)):
        out[role] = n
    return out
