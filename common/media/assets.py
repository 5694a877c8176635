"""Registering images as assets: safe load, dedup, content-addressed store, provenance row."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Select, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.core.errors import ImageRejected
from common.core.settings import ImageSettings
from common.media.images import (
    LoadedImage,
    colour_distance,
    hamming,
    load_image,
)
from common.store.rows import BANDED_MAX_DISTANCE, ROLES, Asset, phash_bands
from common.store.storage import Storage

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
    #: how the crawler found it: ``start``, ``link`` or ``sitemap`` (its page's way in) or ``image_sitemap``
    found_via: str | None = None


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
    limits: ImageSettings,
    phash_threshold: int | None = None,
    colour_tolerance: int = 24,
    near_among: Select[Any] | None = None,
) -> Registration:
    """Store ``data`` as a new asset unless it is refused or already stored.

    Exact duplicates (same sha256) are never stored twice; with ``phash_threshold``, neither
    are near duplicates: difference hash within that Hamming distance of a stored asset *and*
    colours within ``colour_tolerance`` (so colour variants of one product are both kept);
    ``near_among`` limits the near-duplicate search to those asset ids.
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
        near = find_near_duplicate(session, loaded.phash, loaded.colour, phash_threshold, colour_tolerance,
                                   among=near_among)
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
        licence=provenance.licence, fetched_at=provenance.fetched_at, found_via=provenance.found_via,
    )
    try:
        with session.begin_nested():  # another process may register the same bytes meanwhile
            session.add(asset)
            session.flush()
    except IntegrityError:
        existing = session.scalar(select(Asset.id).where(Asset.sha256 == loaded.sha256))
        return Registration("duplicate", asset_id=existing, reason="same content as a stored asset")
    return Registration("registered", asset_id=asset.id)


def find_near_duplicate(session: Session, phash: str, colour: str, threshold: int, colour_tolerance: int, *,
                        use_bands: bool = True, among: Select[Any] | None = None) -> int | None:
    """The id of the oldest stored asset that looks the same (shape and colour), if any.

    ``among``, a select of asset ids, limits the search to those assets (the generate stage
    compares an image only with the character's images from the same adapter).

    Up to ``BANDED_MAX_DISTANCE`` bits (the default threshold is 4) only assets sharing one of
    the hash's indexed bands are read; a larger threshold falls back to reading every hash, as
    does ``use_bands=False`` (benchmarks compare the two).
    """
    query = select(Asset.id, Asset.phash, Asset.colour).order_by(Asset.id)
    if among is not None:
        query = query.where(Asset.id.in_(among))
    if use_bands and threshold <= BANDED_MAX_DISTANCE:
        bands = phash_bands(phash)
        # rows without bands (stored by a worker older than migration 0003) are always candidates
        query = query.where(or_(Asset.phash_b0.is_(None),
                                *(getattr(Asset, f"phash_b{i}") == band for i, band in enumerate(bands))))
    for asset_id, stored_phash, stored_colour in session.execute(query):
        if hamming(phash, stored_phash) <= threshold and (
            stored_colour is None or colour_distance(colour, stored_colour) <= colour_tolerance
        ):
            return int(asset_id)
    return None


def asset_counts(session: Session) -> dict[str, int]:
    out = dict.fromkeys(ROLES, 0)
    for role, n in session.execute(select(Asset.role, func.count()).group_by(Asset.role)):
        out[role] = n
    return out
