"""Near-duplicate search through the indexed hash bands finds exactly what a full scan finds,
on SQLite and PostgreSQL, and the migration that adds the bands fills them for stored assets."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import insert, select, text

from common.media.assets import find_near_duplicate
from common.media.images import (
    colour_distance,
    hamming,
)
from common.store.db import Database
from common.store.rows import BANDED_MAX_DISTANCE, PHASH_BANDS, Asset, phash_bands

GREY = "80" * 27  # a 3x3 colour signature, mid grey


def _flip(phash: str, bits: int, rng: random.Random) -> str:
    value = int(phash, 16)
    for b in rng.sample(range(64), bits):
        value ^= 1 << b
    return f"{value:016x}"


def _asset_row(i: int, phash: str, colour: str = GREY) -> dict:  # type: ignore[type-arg]
    return {"sha256": f"{i:064x}", "phash": phash, "colour": colour, "size_bytes": 1, "format": "JPEG",
            "width": 64, "height": 64, "role": "garment", "uri": f"memory://{i}",
            **{f"phash_b{j}": band for j, band in enumerate(phash_bands(phash))}}


def test_bands_cut_the_hash_without_overlap() -> None:
    assert sum(PHASH_BANDS) == 64 and len(PHASH_BANDS) - 1 == BANDED_MAX_DISTANCE
    rng = random.Random(0)
    for _ in range(200):
        value = rng.getrandbits(64)
        bands, shift, rebuilt = phash_bands(f"{value:016x}"), 64, 0
        for width, band in zip(PHASH_BANDS, bands, strict=True):
            shift -= width
            rebuilt |= band << shift
        assert rebuilt == value
    a = Asset(phash="ffff000000000001")  # the model fills its bands from phash
    assert (a.phash_b0, a.phash_b4) == phash_bands("ffff000000000001")[::4]


def test_banded_search_finds_what_a_full_scan_finds(db: Database) -> None:
    rng = random.Random(7)
    stored = [f"{rng.getrandbits(64):016x}" for _ in range(1500)]
    colours = [GREY if rng.random() < 0.8 else "ff" * 27 for _ in stored]
    # near copies of earlier hashes, so matches at every distance exist
    for i in range(300):
        stored.append(_flip(stored[i], rng.randint(0, 7), rng))
        colours.append(GREY)
    with db.session() as s:
        s.execute(insert(Asset), [_asset_row(i, p, c) for i, (p, c) in enumerate(zip(stored, colours, strict=True))])
        ids = list(s.scalars(select(Asset.id).order_by(Asset.id)))
    probes = [_flip(stored[rng.randrange(len(stored))], rng.randint(0, 8), rng) for _ in range(150)]
    probes += [f"{rng.getrandbits(64):016x}" for _ in range(20)]
    found = 0
    with db.session() as s:
        for probe in probes:
            for threshold in (0, 2, BANDED_MAX_DISTANCE, BANDED_MAX_DISTANCE + 2):
                expected = next((ids[i] for i, (p, c) in enumerate(zip(stored, colours, strict=True))
                                 if hamming(probe, p) <= threshold and colour_distance(GREY, c) <= 24), None)
                assert find_near_duplicate(s, probe, GREY, threshold, 24) == expected, (probe, threshold)
                found += expected is not None
    assert found > 100  # the comparison covered matches, not only misses


def test_search_among_a_subset_sees_only_those_assets(db: Database) -> None:
    rng = random.Random(3)
    base = f"{rng.getrandbits(64):016x}"
    with db.session() as s:
        s.execute(insert(Asset), [_asset_row(i, _flip(base, i, rng)) for i in range(3)])
        ids = list(s.scalars(select(Asset.id).order_by(Asset.id)))
        assert find_near_duplicate(s, base, GREY, 4, 24) == ids[0]
        later = select(Asset.id).where(Asset.id.in_(ids[1:]))
        assert find_near_duplicate(s, base, GREY, 4, 24, among=later) == ids[1]
        assert find_near_duplicate(s, base, GREY, 4, 24, among=select(Asset.id).where(Asset.id == -1)) is None


def test_migration_fills_bands_of_assets_stored_before_it(db: Database) -> None:
    db.downgrade("0002")
    rows = [(f"{i:064x}", f"{random.Random(i).getrandbits(64):016x}") for i in range(5)]
    with db.engine.begin() as conn:
        for sha, phash in rows:
            conn.execute(text("INSERT INTO assets (sha256, phash, size_bytes, format, width, height, role, uri, "
                              "created_at) VALUES (:s, :p, 1, 'JPEG', 64, 64, 'person', 'memory://x', "
                              "CURRENT_TIMESTAMP)"), {"s": sha, "p": phash})
    db.upgrade()
    with db.session() as s:
        got = {a.phash: (a.phash_b0, a.phash_b1, a.phash_b2, a.phash_b3, a.phash_b4) for a in s.scalars(select(Asset))}
    assert got == {phash: phash_bands(phash) for _, phash in rows}
    with db.session() as s:  # and the banded search sees them
        assert find_near_duplicate(s, _flip(rows[2][1], 3, random.Random(1)), GREY, 4, 24) is not None


@pytest.mark.parametrize("threshold", [BANDED_MAX_DISTANCE + 1])
def test_thresholds_beyond_the_bands_still_work_by_full_scan(db: Database, threshold: int) -> None:
    base = "0123456789abcdef"
    far = _flip(base, threshold, random.Random(3))
    with db.session() as s:
        s.execute(insert(Asset), [_asset_row(1, base)])
        assert find_near_duplicate(s, far, GREY, threshold, 24) is not None
        assert find_near_duplicate(s, far, GREY, threshold - 1, 24) is None


def test_assets_stored_without_bands_are_still_found(db: Database) -> None:
    """A worker started before migration 0003 may keep storing rows without bands for a while:
    those rows are always candidates, so they are not invisible to the banded search."""
    row = _asset_row(1, "fedcba9876543210")
    row.update({f"phash_b{j}": None for j in range(len(PHASH_BANDS))})
    with db.session() as s:
        s.execute(insert(Asset), [row])
        probe = _flip("fedcba9876543210", 2, random.Random(4))
        assert find_near_duplicate(s, probe, GREY, 4, 24) is not None


def test_migrations_go_down_and_up_with_assets_in_item_sets(db: Database) -> None:
    """SQLite alters a table by rebuilding it; with item sets referencing assets that must not
    trip the foreign keys, and nothing may be lost on the way down and up."""
    from common.domain.pairing import create_item_set

    with db.session() as s:
        s.execute(insert(Asset), [_asset_row(i, f"{i:016x}") for i in (1, 2)])
        a, b = s.scalars(select(Asset.id).order_by(Asset.id))
        create_item_set(s, recipe="tryon", key="tryon:test", members=[(a, "person"), (b, "garment")],
                        keywords={}, variation=None, seed=1)
    db.downgrade("0001")
    db.upgrade()
    with db.session() as s:
        assert s.scalar(text("SELECT count(*) FROM item_set_assets")) == 2
        assert [x.phash_b4 for x in s.scalars(select(Asset).order_by(Asset.id))] == [
            phash_bands(f"{i:016x}")[4] for i in (1, 2)]
    if db.engine.dialect.name == "sqlite":
        with db.engine.connect() as conn:  # the pragma is back on for the connections that follow
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
