"""Registering images as assets: safe load, dedup, content-addressed store, provenance row."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Select, exists, func, or_, select
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
from common.store.rows import (
    BANDED_MAX_DISTANCE,
    ROLES,
    Analysis,
    Asset,
    Edit,
    ItemSetAsset,
    phash_bands,
)
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
    #: how the role was decided (site rule, detector and what it saw, default)
    role_evidence: dict[str, Any] | None = None
    #: other renditions of the photo met with it: [{url, width}] (the crawler's version group)
    versions: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Registration:
    """``replaced``: a larger version of a stored photo arrived and became that asset's content."""

    status: Literal["registered", "duplicate", "near_duplicate", "rejected", "replaced"]
    asset_id: int | None = None
    reason: str | None = None
    code: str | None = None  # the reason code of a refusal (the loader's, or image.near_duplicate ...)


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
    prefer_larger: bool = False,
) -> Registration:
    """Store ``data`` as a new asset unless it is refused or already stored.

    Exact duplicates (same sha256) are never stored twice; with ``phash_threshold``, neither
    are near duplicates: difference hash within that Hamming distance of a stored asset *and*
    colours within ``colour_tolerance`` (so colour variants of one product are both kept);
    ``near_among`` limits the near-duplicate search to those asset ids.

    With ``prefer_larger`` (the crawler), a near duplicate with more pixels than the stored asset
    is a larger version of it: it becomes that asset's content (``replaced``), both URLs kept in
    ``versions``, unless the asset was already analysed or edited (its lineage would change under
    it): then the larger URL is only recorded there and the bytes refused as a near duplicate.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (allowed: {', '.join(ROLES)})")
    try:
        loaded = load_image(data, limits)
    except ImageRejected as exc:
        return Registration("rejected", reason=exc.reason, code=exc.code)
    existing = session.scalar(select(Asset.id).where(Asset.sha256 == loaded.sha256))
    if existing is not None:
        return Registration("duplicate", asset_id=existing, reason="same content as a stored asset")
    if phash_threshold is not None:
        near = find_near_duplicate(session, loaded.phash, loaded.colour, phash_threshold, colour_tolerance,
                                   among=near_among)
        if near is not None:
            if prefer_larger:
                return _larger_version(session, near, data, loaded, storage, provenance)
            return Registration("near_duplicate", asset_id=near, code="image.near_duplicate",
                                reason=f"within {phash_threshold} bits of asset {near}")
    stored = storage.put(data, loaded.extension)
    return _insert(session, loaded, stored.uri, role, provenance)


def _version(url: str | None, loaded: LoadedImage | None, kept: bool, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"url": url, "kept": kept, **extra}
    if loaded is not None:
        out.update(width=loaded.width, height=loaded.height, sha256=loaded.sha256, size_bytes=loaded.size_bytes)
    return out


def _versions_of(provenance: Provenance, loaded: LoadedImage) -> list[dict[str, Any]] | None:
    if not provenance.versions:
        return None
    return [_version(provenance.source_url, loaded, True),
            *({**v, "kept": False} for v in provenance.versions if v.get("url") != provenance.source_url)]


def asset_in_use(session: Session, asset_id: int) -> bool:
    """Whether an analysis or an edit was made from an item set holding the asset."""
    sets = select(ItemSetAsset.item_set_id).where(ItemSetAsset.asset_id == asset_id)
    return bool(session.scalar(select(
        exists().where(Analysis.item_set_id.in_(sets)) | exists().where(Edit.item_set_id.in_(sets)))))


def _larger_version(session: Session, asset_id: int, data: bytes, loaded: LoadedImage, storage: Storage,
                    provenance: Provenance) -> Registration:
    asset = session.get(Asset, asset_id, with_for_update=True)
    assert asset is not None
    versions = list(asset.versions or [_version(asset.source_url, None, True, width=asset.width,
                                                height=asset.height, sha256=asset.sha256)])
    if loaded.width * loaded.height <= asset.width * asset.height:
        return Registration("near_duplicate", asset_id=asset_id, code="image.near_duplicate",
                            reason=f"a version of asset {asset_id} no larger than the stored one")
    if asset_in_use(session, asset_id):
        if not any(v.get("url") == provenance.source_url for v in versions):
            asset.versions = [*versions, _version(provenance.source_url, loaded, False, why="asset.in_use")]
        return Registration("near_duplicate", asset_id=asset_id, code="image.larger_version_too_late",
                            reason=f"a larger version of asset {asset_id}, which was already analysed or edited")
    stored = storage.put(data, loaded.extension)
    versions = [{**v, "kept": False} for v in versions if v.get("url") != provenance.source_url]
    asset.versions = [*versions, _version(provenance.source_url, loaded, True)]
    asset.sha256, asset.phash, asset.colour = loaded.sha256, loaded.phash, loaded.colour
    asset.size_bytes, asset.format, asset.width, asset.height = loaded.size_bytes, loaded.format, loaded.width, loaded.height
    asset.uri, asset.source_url = stored.uri, provenance.source_url
    asset.page_url = provenance.page_url or asset.page_url
    asset.fetched_at = provenance.fetched_at or asset.fetched_at
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:  # another process stored these very bytes meanwhile
        session.refresh(asset)
        existing = session.scalar(select(Asset.id).where(Asset.sha256 == loaded.sha256))
        return Registration("duplicate", asset_id=existing, reason="same content as a stored asset")
    return Registration("replaced", asset_id=asset_id, reason=f"larger version of asset {asset_id}")


def _insert(session: Session, loaded: LoadedImage, uri: str, role: str, provenance: Provenance) -> Registration:
    asset = Asset(
        sha256=loaded.sha256, phash=loaded.phash, colour=loaded.colour, size_bytes=loaded.size_bytes, format=loaded.format,
        width=loaded.width, height=loaded.height, role=role, uri=uri,
        source_path=provenance.source_path, source_url=provenance.source_url,
        page_url=provenance.page_url, site=provenance.site, category=provenance.category,
        licence=provenance.licence, fetched_at=provenance.fetched_at, found_via=provenance.found_via,
        role_evidence=provenance.role_evidence, versions=_versions_of(provenance, loaded),
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
