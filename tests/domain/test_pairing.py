"""Pairing: reproducible try-on sets, enrich variations, keyword context, idempotent vl jobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from common.devkit import samples
from common.store.rows import Asset, ItemSet, Job


def _ingest(folder: Path, role: str) -> None:
    from common.core.settings import get_settings
    from common.dataset.ingest import ingest
    from common.store.db import get_database
    from common.store.storage import get_storage

    report = ingest(folder, role, db=get_database(), storage=get_storage(), settings=get_settings())
    assert not report.rejected


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, Path]:
    folders = samples.write_samples(tmp_path / "photos", persons=4, garments=6, characters=5, seed=3)
    for role, folder in folders.items():
        _ingest(folder, role)
    return folders


def _pair(recipe: str, **kw):  # type: ignore[no-untyped-def]
    from common.core.settings import get_settings
    from common.domain.pairing import pair
    from common.store.db import get_database

    with get_database().session() as s:
        return pair(s, get_settings(), recipe, **kw)


def _sets(recipe: str) -> list[ItemSet]:
    from common.store.db import get_database

    with get_database().session() as s:
        sets = s.scalars(select(ItemSet).where(ItemSet.recipe == recipe).order_by(ItemSet.id)).all()
        for item in sets:
            for m in item.members:
                _ = m.asset.role
        return list(sets)


def test_tryon_sets_are_valid_distinct_and_reproducible(photos: dict[str, Path]) -> None:
    report = _pair("tryon", limit=10, seed=7)
    assert report.created == 10 and report.jobs == 10
    sets = _sets("tryon")
    keys = [s.key for s in sets]
    assert len(set(keys)) == len(keys)
    for item in sets:
        roles = [m.role for m in item.members]
        assert roles[0] == "person" and 1 <= roles.count("garment") <= 3 and len(roles) == 1 + roles.count("garment")
        assert all(m.asset.role == r for m, r in zip(item.members, roles, strict=True))
        assert set(item.keywords) == {"occasion", "season", "setting", "lighting", "style"}
    assert _pair("tryon", limit=10, seed=7).created == 0  # pairing twice adds nothing
    other = _pair("tryon", limit=5, seed=8)  # another seed: a new stream, overlaps counted
    assert other.created + other.existing == 5 and other.created >= 1
    assert len({s.key for s in _sets("tryon")}) == 10 + other.created


def test_same_seed_same_sets_across_databases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.settings import reset_settings
    from common.store.db import reset_databases

    runs = []
    for name in ("a", "b"):
        monkeypatch.setenv("SYNTHPIPE_DATA_DIR", str(tmp_path / name))
        reset_settings()
        reset_databases()
        folders = samples.write_samples(tmp_path / f"photos-{name}", persons=3, garments=5, seed=1)
        for role, folder in folders.items():
            _ingest(folder, role)
        _pair("tryon", limit=6, seed=42)
        runs.append([(s.key, s.keywords, s.seed) for s in _sets("tryon")])
    assert runs[0] == runs[1]


def test_enrich_makes_n_variations_per_character(photos: dict[str, Path]) -> None:
    report = _pair("enrich", seed=1)
    assert report.created == 25 and report.jobs == 25  # 5 photos x 5 variations
    sets = _sets("enrich")
    by_char: dict[int, list[ItemSet]] = {}
    for item in sets:
        assert [m.role for m in item.members] == ["character"]
        assert set(item.variation or {}) == {"background", "lighting", "art_style", "camera_angle"}
        by_char.setdefault(item.members[0].asset_id, []).append(item)
    assert len(by_char) == 5
    for variations in by_char.values():
        combos = {json.dumps(v.variation, sort_keys=True) for v in variations}
        assert len(combos) == 5, "variations of one character must differ"
    assert _pair("enrich", seed=1).created == 0


def test_each_set_queues_exactly_one_vl_job(photos: dict[str, Path]) -> None:
    from common.store.db import get_database

    _pair("tryon", limit=4, seed=2)
    _pair("enrich", seed=2)
    _pair("enrich", seed=2)
    with get_database().session() as s:
        jobs = s.scalars(select(Job).where(Job.stage == "vl")).all()
        n_sets = len(s.scalars(select(ItemSet)).all())
        assert len(jobs) == n_sets == 4 + 25
        assert {j.item_set_id for j in jobs} == set(s.scalars(select(ItemSet.id)))
        assert all(j.status == "queued" and j.payload["item_set_id"] == j.item_set_id for j in jobs)
        assert s.scalar(select(Asset.id).where(Asset.role == "garment")) is not None


def test_custom_keyword_file_is_used_and_validated(photos: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.errors import ConfigError
    from common.core.keywords import load_keywords
    from common.core.settings import get_settings, reset_settings

    kw = tmp_path / "kw.yaml"
    kw.write_text("context:\n  occasion: [gala]\n  season: [winter]\n  setting: [ballroom]\n  lighting: [candle]\n"
                  "  style: [baroque]\n  mood: [calm]\n"
                  "enrich:\n  background: [moon]\n  lighting: [starlight]\n  art_style: [etching]\n"
                  "  camera_angle: [top down]\n")
    monkeypatch.setenv("SYNTHPIPE_PAIRING__KEYWORDS_FILE", str(kw))
    reset_settings()
    _pair("tryon", limit=2, seed=0)
    assert all(s.keywords == {"occasion": "gala", "season": "winter", "setting": "ballroom", "lighting": "candle",
                              "style": "baroque", "mood": "calm"} for s in _sets("tryon"))
    # a file without an axis the prompt needs is refused at start-up, not by every vl job later
    short = tmp_path / "short.yaml"
    short.write_text("context:\n  occasion: [gala]\n  mood: [calm]\nenrich:\n  background: [moon]\n")
    monkeypatch.setenv("SYNTHPIPE_PAIRING__KEYWORDS_FILE", str(short))
    reset_settings()
    with pytest.raises(ConfigError, match=r"PAIRING__KEYWORDS_FILE.*'lighting', 'season', 'setting', 'style'.*tryon\.v1"):
        get_settings()
    bad = tmp_path / "bad.yaml"
    bad.write_text("context:\n  occasion: [gala]\nenrich:\n  background: [moon]\nextra: 1\n")
    load_keywords.cache_clear()
    with pytest.raises(ConfigError, match="extra"):
        load_keywords(bad)


def test_pair_cli_json(photos: dict[str, Path]) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "common.cli", "pair", "--recipe", "tryon", "--limit", "3",
                          "--seed", "5", "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"recipe": "tryon", "created": 3, "existing": 0, "jobs": 3}
    bad = subprocess.run([sys.executable, "-m", "common.cli", "pair", "--recipe", "tryon", "--limit", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "positive" in bad.stderr


def test_persons_stored_before_any_garment_are_paired_when_garments_arrive(tmp_path: Path) -> None:
    """Crawl order decides whether person photos or garments are stored first; either way every
    person photo ends up in a try-on set (the crawler pairs as it stores)."""
    from common.core.settings import get_settings
    from common.domain.pairing import pair_new_assets
    from common.store.db import get_database

    folders = samples.write_samples(tmp_path / "photos", persons=3, garments=2, characters=0, seed=5)
    db, settings = get_database(), get_settings()
    _ingest(folders["person"], "person")
    with db.session() as s:
        persons = list(s.scalars(select(Asset.id).where(Asset.role == "person")))
        assert sum(r.created for r in pair_new_assets(s, settings, persons, seed=1)) == 0  # no garments yet
        s.commit()
    _ingest(folders["garment"], "garment")
    with db.session() as s:
        garments = list(s.scalars(select(Asset.id).where(Asset.role == "garment")))
        pair_new_assets(s, settings, garments, seed=2)
        s.commit()
    paired = {m.asset_id for item in _sets("tryon") for m in item.members if m.role == "person"}
    assert paired == set(persons)
    # once garments exist, persons left unpaired on purpose (ingest does not pair) stay so:
    # a later garment does not sweep them all into sets
    more = samples.write_samples(tmp_path / "more", persons=4, garments=1, characters=0, seed=6)
    _ingest(more["person"], "person")
    before = len(_sets("tryon"))
    _ingest(more["garment"], "garment")
    with db.session() as s:
        new_garment = max(s.scalars(select(Asset.id).where(Asset.role == "garment")))
        pair_new_assets(s, settings, [new_garment], seed=3)
        s.commit()
    assert len(_sets("tryon")) == before + 1


@pytest.mark.postgres
def test_a_set_made_by_another_process_meanwhile_is_not_an_error(pg_url: str) -> None:
    """Two crawlers may draw the same set at once: the second insert waits for the first and then
    finds the set made, instead of failing its whole crawl job."""
    import threading
    import time

    from sqlalchemy.orm import Session

    from common.domain.pairing import create_item_set
    from common.store.db import Database

    db = Database(pg_url)
    db.upgrade()
    with db.session() as s:
        person, garment = (Asset(sha256=f"{i:064x}", phash="0123456789abcdef", size_bytes=1, format="JPEG",
                                 width=64, height=64, role=role, uri="memory://x")
                           for i, role in ((1, "person"), (2, "garment")))
        s.add_all([person, garment])
        s.flush()
        members = [(person.id, "person"), (garment.id, "garment")]
    key = f"tryon:p{members[0][0]}:g{members[1][0]}"
    first = Session(db.engine)
    made, _ = create_item_set(first, recipe="tryon", key=key, members=members, keywords={}, variation=None,
                              seed=1)  # flushed, not committed: the key is held
    threading.Thread(target=lambda: (time.sleep(0.5), first.commit(), first.close()), daemon=True).start()
    with db.session() as second:
        got, created = create_item_set(second, recipe="tryon", key=key, members=members, keywords={},
                                       variation=None, seed=1)
    assert (got, created) == (made, False)
    db.dispose()
