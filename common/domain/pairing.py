"""Pairing: assets → item sets → queued ``vl`` jobs.

- ``tryon``: one person photo and 1–3 garment photos, sampled reproducibly from a seed and
  never the same set twice (a set's key is its person and sorted garment ids).
- ``enrich``: for each character photo, N variations across background, lighting, art style
  and camera angle that keep the character's identity.

Every set gets keyword context drawn from the keyword file, recorded on the set. Pairing is
idempotent: a set that exists is not made again, and its ``vl`` job is keyed by the set.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.core.keywords import draw, draw_distinct, load_keywords
from common.core.settings import Settings
from common.store import jobs as jobstore
from common.store.rows import Asset, ItemSet, ItemSetAsset

GARMENT_COUNT_WEIGHTS = (0.6, 0.3, 0.1)  # 1, 2 or 3 garments per try-on set


@dataclass
class PairReport:
    recipe: str
    created: int = 0
    existing: int = 0
    jobs: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "created": self.created, "existing": self.existing, "jobs": self.jobs}


def create_item_set(
    session: Session,
    *,
    recipe: str,
    key: str,
    members: Sequence[tuple[int, str]],
    keywords: dict[str, str],
    variation: dict[str, str] | None,
    seed: int,
) -> tuple[int, bool]:
    """Make the set ``key`` (unless it exists) and queue its ``vl`` job; returns (id, created)."""
    existing = session.scalar(select(ItemSet.id).where(ItemSet.key == key))
    if existing is not None:
        return existing, False
    item = ItemSet(key=key, recipe=recipe, keywords=keywords, variation=variation, seed=seed)
    item.members = [ItemSetAsset(position=i, asset_id=a, role=r) for i, (a, r) in enumerate(members)]
    try:
        with session.begin_nested():
            session.add(item)
            session.flush()
    except IntegrityError:  # another process made the same set meanwhile: it exists, not an error
        existing = session.scalar(select(ItemSet.id).where(ItemSet.key == key))
        if existing is None:
            raise
        return existing, False
    jobstore.enqueue(session, "vl", f"vl:{key}", {"item_set_id": item.id, "recipe": recipe},
                     item_set_id=item.id)
    return item.id, True


class _IdList:
    """Every id of a role, loaded once (``synthpipe pair`` over the whole store)."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def available(self, k: int) -> int:
        return min(k, len(self.ids))

    def choice(self, rng: random.Random) -> int:
        return rng.choice(self.ids)

    def sample(self, rng: random.Random, k: int) -> list[int]:
        return rng.sample(self.ids, k)


class _IndexedIds:
    """Ids of a role drawn through the index, a bounded number of queries per draw however many
    assets the store holds (pairing as the crawler stores, one image at a time).

    A draw picks a random point in the role's id range and takes the first id at or after it; ids
    after a gap are a little likelier, which pairing does not mind.
    """

    def __init__(self, session: Session, role: str) -> None:
        self.session, self.role = session, role
        self.lo = session.scalar(select(Asset.id).where(Asset.role == role).order_by(Asset.id).limit(1))
        self.hi = session.scalar(select(Asset.id).where(Asset.role == role).order_by(Asset.id.desc()).limit(1))

    def available(self, k: int) -> int:
        if self.lo is None:
            return 0
        return len(list(self.session.scalars(select(Asset.id).where(Asset.role == self.role).limit(k))))

    def choice(self, rng: random.Random) -> int:
        assert self.lo is not None and self.hi is not None
        point = rng.randint(self.lo, self.hi)
        found = self.session.scalar(select(Asset.id).where(Asset.role == self.role, Asset.id >= point)
                                    .order_by(Asset.id).limit(1))
        return int(found if found is not None else self.hi)

    def sample(self, rng: random.Random, k: int) -> list[int]:
        out: list[int] = []
        for _ in range(8 * k):
            if len(out) == k:
                break
            pick = self.choice(rng)
            if pick not in out:
                out.append(pick)
        return out


def pair_tryon(session: Session, settings: Settings, *, limit: int | None, seed: int,
               persons: Sequence[int] | None = None, indexed: bool = False) -> PairReport:
    """Up to ``limit`` new try-on sets (default: one per person photo).

    ``indexed`` draws persons and garments through the index instead of loading every id: the work
    is bounded by ``limit``, not by the size of the store (the crawler pairs this way).
    """
    report = PairReport("tryon")
    garments_src: _IdList | _IndexedIds = _IndexedIds(session, "garment") if indexed else _IdList(_ids(session, "garment"))
    person_ids = list(persons) if persons is not None else None
    persons_src: _IdList | _IndexedIds | None = None
    if person_ids is None:
        persons_src = _IndexedIds(session, "person") if indexed else _IdList(_ids(session, "person"))
        if not persons_src.available(1):
            return report
    elif not person_ids:
        return report
    max_k = garments_src.available(settings.pairing.max_garments)
    if not max_k:
        return report
    if limit is None:
        limit = len(person_ids) if person_ids is not None else len(_ids(session, "person"))
    kw = load_keywords(settings.pairing.keywords_file)
    # The seed fixes an ordered stream of distinct sets; --limit takes its first N. Sets that
    # exist already count toward N but are not made again, so the same command twice adds nothing.
    rng = random.Random(seed)
    seen: set[str] = set()
    tries = 0
    while len(seen) < limit and tries < 50 * max(limit, 1):
        tries += 1
        if person_ids is not None:
            person = person_ids[(tries - 1) % len(person_ids)]
        else:
            assert persons_src is not None
            person = persons_src.choice(rng)
        k = rng.choices(range(1, max_k + 1), weights=GARMENT_COUNT_WEIGHTS[:max_k])[0]
        garments = sorted(garments_src.sample(rng, k))
        key = f"tryon:p{person}:g{'-'.join(map(str, garments))}"
        if key in seen:
            continue
        seen.add(key)
        set_seed = rng.getrandbits(31)
        members = [(person, "person")] + [(g, "garment") for g in garments]
        _, created = create_item_set(session, recipe="tryon", key=key, members=members,
                                     keywords=draw(kw.context, random.Random(set_seed)),
                                     variation=None, seed=set_seed)
        report.created += created
        report.existing += not created
        report.jobs += created
    return report


def pair_enrich(session: Session, settings: Settings, *, limit: int | None, seed: int,
                characters: Sequence[int] | None = None) -> PairReport:
    """N variations per character photo (N = ``pairing.enrich_variations``), up to ``limit`` sets."""
    report = PairReport("enrich")
    kw = load_keywords(settings.pairing.keywords_file)
    n = settings.pairing.enrich_variations
    for character in (list(characters) if characters is not None else _ids(session, "character")):
        rng = random.Random(f"{seed}:{character}")
        for i, variation in enumerate(draw_distinct(kw.enrich, n, rng)):
            if limit is not None and report.created >= limit:
                return report
            set_seed = rng.getrandbits(31)
            _, created = create_item_set(
                session, recipe="enrich", key=f"enrich:c{character}:v{i}",
                members=[(character, "character")], keywords=draw(kw.context, random.Random(set_seed)),
                variation=variation, seed=set_seed,
            )
            report.created += created
            report.existing += not created
            report.jobs += created
    return report


def pair(session: Session, settings: Settings, recipe: str, *, limit: int | None = None, seed: int = 0) -> PairReport:
    if recipe == "tryon":
        return pair_tryon(session, settings, limit=limit, seed=seed)
    if recipe == "enrich":
        return pair_enrich(session, settings, limit=limit, seed=seed)
    raise ValueError(f"unknown recipe {recipe!r} (allowed: tryon, enrich)")


def pair_new_assets(session: Session, settings: Settings, asset_ids: Sequence[int], *, seed: int) -> list[PairReport]:
    """Feed pairing from newly stored assets (the crawler calls this): every new person photo gets a
    try-on set, every new character photo its variations. The work is bounded by ``asset_ids``,
    not by the store: ids are drawn through the index, never all loaded."""
    roles = {a: r for a, r in session.execute(select(Asset.id, Asset.role).where(Asset.id.in_(list(asset_ids))))}
    persons = [a for a in asset_ids if roles.get(a) == "person"]
    garments = [a for a in asset_ids if roles.get(a) == "garment"]
    characters = [a for a in asset_ids if roles.get(a) == "character"]
    reports = []
    if persons:
        reports.append(pair_tryon(session, settings, limit=len(persons), seed=seed, persons=persons, indexed=True))
    if garments:
        # Person photos stored while there was no garment at all are waiting for a set: when the
        # first garments arrive they go first, so crawl order never leaves a person unpaired.
        # Then the new garments join random sets.
        first_garments = not session.scalar(
            select(exists().where(Asset.role == "garment", Asset.id.not_in(garments))))
        waiting = _unpaired(session, "person") if first_garments else []
        if waiting:
            reports.append(pair_tryon(session, settings, limit=len(waiting), seed=seed + 1, persons=waiting,
                                      indexed=True))
        reports.append(pair_tryon(session, settings, limit=len(garments), seed=seed + 1, indexed=True))
    if characters:
        reports.append(pair_enrich(session, settings, limit=None, seed=seed, characters=characters))
    return reports


def _unpaired(session: Session, role: str) -> list[int]:
    """Assets of ``role`` that are in no item set yet, oldest first."""
    in_a_set = exists().where(ItemSetAsset.asset_id == Asset.id)
    return list(session.scalars(select(Asset.id).where(Asset.role == role, ~in_a_set).order_by(Asset.id)))


def _ids(session: Session, role: str) -> list[int]:
    return list(session.scalars(select(Asset.id).where(Asset.role == role).order_by(Asset.id)))
