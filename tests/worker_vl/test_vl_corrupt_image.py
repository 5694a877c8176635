"""A VL job whose stored photo is damaged fails with the safe loader's own reason code
(``image.corrupt``, ``image.not_an_image``), so summaries and the dashboard can count it, rather
than the generic ``input.invalid``; on a tiny Qwen2.5-VL, end to end through the stage runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.models import use_tiny_models
from fixtures.pipeline import stage_context
from sqlalchemy import select

from common.devkit import samples
from common.store.rows import Asset, ItemSet, Job


def _setup(tmp: Path, *, persons: int, garments: int, tryon: int) -> None:
    from common.core.settings import get_settings
    from common.dataset.ingest import ingest
    from common.domain.pairing import pair
    from common.store.db import get_database
    from common.store.storage import get_storage

    folders = samples.write_samples(tmp / "photos", persons=persons, garments=garments, characters=0, seed=11)
    db, settings = get_database(), get_settings()
    for role, folder in folders.items():
        assert not ingest(folder, role, db=db, storage=get_storage(), settings=settings).rejected
    with db.session() as s:
        pair(s, settings, "tryon", limit=tryon, seed=3)


def _run_vl() -> dict[str, int]:
    from common.runtime.runner import run_stage

    return run_stage("vl", stage_context(), batch_size=4).by_status


@pytest.fixture
def tiny(tiny_vl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings pointed at the tiny VL checkpoint (``tiny_vl``: a shared fixture)."""
    use_tiny_models(monkeypatch, {"vl": tiny_vl})


@pytest.mark.parametrize(("damage", "code"), [
    (lambda data: data[:200], "image.corrupt"),  # cut short on disk
    (lambda data: b"<html>gone</html>" + bytes(200), "image.not_an_image"),  # overwritten
])
def test_a_damaged_stored_photo_fails_its_vl_job_with_the_loaders_code(tiny: None, tmp_path: Path, damage,
                                                                       code: str) -> None:
    from common.store.db import get_database

    _setup(tmp_path, persons=2, garments=2, tryon=3)
    db = get_database()
    with db.session() as s:
        victim = s.scalars(select(Asset).where(Asset.role == "person").order_by(Asset.id)).first()
        assert victim is not None
        path = Path(victim.uri.removeprefix("file://"))
        victim_id = victim.id
        affected = {m.item_set_id for item in s.scalars(select(ItemSet)).all() for m in item.members
                    if m.asset_id == victim_id}
    path.write_bytes(damage(path.read_bytes()))
    by_status = _run_vl()
    assert by_status["failed"] == len(affected) >= 1
    with db.session() as s:
        failed = s.scalars(select(Job).where(Job.stage == "vl", Job.status == "failed")).all()
        assert {j.item_set_id for j in failed} == affected
        assert {(j.error_type, j.reason) for j in failed} == {("input", code)}
        assert all(f"person photo asset {victim_id}" in (j.error_message or "") for j in failed)
        assert {j.reason for j in s.scalars(select(Job).where(Job.stage == "vl", Job.status != "failed"))} == {None}
