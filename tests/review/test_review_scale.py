"""The review queue and stats at scale: each request reads a page's worth of rows (or the reviewed
edits), never every edit; and the tables the ``reviews`` trigger keeps (``review_current``,
``review_edit_counts``) always equal what the review history says."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fixtures.review import Spec, add_edit
from sqlalchemy import event, select, text

from common.core.settings import ReviewSettings
from common.review import auth
from common.review.app import create_app
from common.store.db import Database
from common.store.rows import Review, ReviewCurrent, ReviewEditCount
from common.store.storage import get_storage

EDITS = 30_000
SITES = 5
#: every 50th edit is reviewed by both reviewers (2 %), as in the scale benchmark
REVIEWED_EVERY = 50


def build_store_sql(n: int) -> list[str]:
    """Set-based statements that fill an empty PostgreSQL store with ``n`` edits: 20 person
    photos (5 sites, 2 categories), one item set per edit, two scores and an AI decision per edit
    (a third rejected), and two reviewers' decisions on every ``REVIEWED_EVERY``-th edit."""
    return [
        "SELECT setseed(0.5)",
        f"""INSERT INTO assets (id, sha256, phash, size_bytes, format, width, height, role, uri, site, category,
                                created_at)
            SELECT a, lpad(to_hex(a), 64, '0'), '0000000000000000', 1, 'png', 64, 64, 'person',
                   'file:///nowhere/' || a || '.png', 'shop-' || (a % {SITES}), 'cat-' || (a % 2), now()
            FROM generate_series(1, 20) a""",
        f"""INSERT INTO item_sets (id, key, recipe, created_at)
            SELECT i, 'scale-' || i, CASE WHEN i % 4 = 0 THEN 'enrich' ELSE 'tryon' END, now()
            FROM generate_series(1, {n}) i""",
        f"""INSERT INTO item_set_assets (item_set_id, position, asset_id, role)
            SELECT i, 0, 1 + i % 20, 'person' FROM generate_series(1, {n}) i""",
        f"""INSERT INTO edits (id, item_set_id, origin, edit_prompt, backend, model_id, params, seed, output_uri,
                               output_sha256, width, height, timings, created_at)
            SELECT i, i, 'pipeline', 'edit ' || i, 'scale', 'scale', '{{}}', i, 'file:///nowhere/out.png',
                   repeat('0', 64), 64, 64, '{{}}', now() FROM generate_series(1, {n}) i""",
        f"""INSERT INTO scores (edit_id, scorer, metrics, params, created_at, updated_at)
            SELECT i, s, json_build_object('clip_score', round(random()::numeric, 4)), '{{}}', now(), now()
            FROM generate_series(1, {n}) i CROSS JOIN (VALUES ('clip'), ('dino')) v(s)""",
        f"""INSERT INTO decisions (id, edit_id, decision, reasons, failed, thresholds, margin, decided_at)
            SELECT i, i, CASE WHEN i % 3 = 0 THEN 'rejected' ELSE 'accepted' END,
                   CASE WHEN i % 3 = 0 THEN '["identity_lost"]'::json ELSE '[]'::json END, '{{}}', '{{}}',
                   round(random()::numeric, 4), now() FROM generate_series(1, {n}) i""",
        f"""INSERT INTO reviews (reviewer_id, edit_id, decision, tags, created_at)
            SELECT r.id, i, CASE WHEN random() < 0.3 THEN 'rejected' ELSE 'accepted' END,
                   CASE WHEN random() < 0.2 THEN '["artifacts"]'::json ELSE '[]'::json END, now()
            FROM generate_series(1, {n}) i CROSS JOIN (SELECT id FROM reviewers ORDER BY id) r
            WHERE i % {REVIEWED_EVERY} = 1""",
        *(f"SELECT setval(pg_get_serial_sequence('{t}', 'id'), (SELECT max(id) FROM {t}))"
          for t in ("assets", "item_sets", "edits", "scores", "decisions", "reviews")),
    ]


def build_store(db: Database, n: int) -> str:
    """Two reviewers (ann, ben) and ``n`` edits; a script token of ann."""
    with db.session() as s:
        auth.add_reviewer(s, "ann", "scale-password")
        auth.add_reviewer(s, "ben", "scale-password")
        token = auth.new_token(s, "ann")
        for stmt in build_store_sql(n):
            s.execute(text(stmt))
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    return token


class Statements:
    """The SELECT statements an engine runs (with their parameters), to EXPLAIN afterwards."""

    def __init__(self, db: Database) -> None:
        self.db, self.seen = db, []

    def __enter__(self) -> list[tuple[str, Any]]:
        event.listen(self.db.engine, "before_cursor_execute", self._seen)
        return self.seen

    def __exit__(self, *exc: object) -> None:
        event.remove(self.db.engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            self.seen.append((statement, parameters))


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def rows_read(db: Database, statement: str, parameters: Any) -> tuple[Counter[str], set[str]]:
    """Rows each table's scans returned while the statement ran (EXPLAIN ANALYZE: actual rows
    times loops, per relation), and the kinds of scan used on the big tables."""
    with db.engine.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters).scalar()
    read: Counter[str] = Counter()
    kinds: set[str] = set()
    for node in _nodes(plan[0]["Plan"]):
        if "Relation Name" in node:
            read[node["Relation Name"]] += int(node["Actual Rows"]) * int(node["Actual Loops"])
            if node["Relation Name"] in BIG_TABLES:
                kinds.add(node["Node Type"])
    return read, kinds


@pytest.fixture(scope="module")
def big_store() -> Iterator[tuple[Database, str]]:
    from fixtures.databases import PG_ADMIN_URL

    from common.devkit.scratch import create_scratch_database, drop_scratch_database

    url = create_scratch_database(PG_ADMIN_URL, "synthpipe_test")
    db = Database_for(url)
    try:
        yield db, build_store(db, EDITS)
    finally:
        db.dispose()
        drop_scratch_database(PG_ADMIN_URL, url)


def Database_for(url: str) -> Database:  # noqa: N802 - reads as the type it returns
    db = Database(url)
    db.upgrade()
    return db


BIG_TABLES = ("edits", "decisions", "scores", "item_sets", "item_set_assets", "reviews")
#: rows of the big tables one request may read: a page, the rows it skipped (reviewed edits are
#: 2 %, a filter on a third), and the reviewed edits' rows: far below EDITS
BOUND = 3 * EDITS * 2 // REVIEWED_EVERY + 200


@pytest.mark.postgres
@pytest.mark.parametrize("path", [
    "/api/items?sort=uncertain&limit=20",
    "/api/items?ai=rejected&limit=20",
    "/api/items?ai=accepted&limit=20&offset=40",
    "/api/items?mine=done&limit=20",
    "/api/items?recipe=enrich&limit=20",
    "/api/items?site=shop-3&limit=20",
    "/api/items?sort=newest&limit=20",
    "/api/stats",
])
def test_requests_read_a_page_not_every_edit(big_store: tuple[Database, str], path: str) -> None:
    db, token = big_store
    c = TestClient(create_app(db, get_storage(), ReviewSettings()), base_url="http://127.0.0.1")
    with Statements(db) as seen:
        r = c.get(path, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    body = r.json()
    if path.startswith("/api/items"):
        assert len(body["items"]) == 20 or "mine=done" in path
        margins = [i["ai"]["margin"] for i in body["items"]]
        assert "sort=newest" in path or margins == sorted(margins)
    assert seen
    grows = []
    for statement, parameters in seen:
        read, kinds = rows_read(db, statement, parameters)
        big = sum(n for t, n in read.items() if t in BIG_TABLES)
        if big > BOUND:  # only the exact totals may: edits in all, or one AI decision, by an index-only count
            assert kinds == {"Index Only Scan"} and re.match(r"SELECT count\(", statement), (path, statement, read)
            grows.append(statement)
    # edits in all (total and progress share it); with an AI filter also that decision's count
    assert len(grows) <= (2 if "ai=" in path else 1), grows


def fresh_state(db: Database) -> tuple[dict[tuple[int, int], tuple[str, list[str], int]], dict[int, tuple[int, int]]]:
    """What the maintained tables must hold, computed from the whole review history."""
    newest: dict[tuple[int, int], Review] = {}
    with db.session() as s:
        for row in s.scalars(select(Review).order_by(Review.id)):
            newest[(row.reviewer_id, row.edit_id)] = row
        current = {k: (r.decision, list(r.tags or []), r.id) for k, r in newest.items()}
    counts: dict[int, tuple[int, int]] = {}
    for (_, edit_id), (decision, _, _) in current.items():
        a, r = counts.get(edit_id, (0, 0))
        counts[edit_id] = (a + (decision == "accepted"), r + (decision == "rejected"))
    return current, counts


def kept_state(db: Database) -> tuple[dict[tuple[int, int], tuple[str, list[str], int]], dict[int, tuple[int, int]]]:
    with db.session() as s:
        current = {(c.reviewer_id, c.edit_id): (c.decision, list(c.tags or []), c.review_id)
                   for c in s.scalars(select(ReviewCurrent))}
        counts = {c.edit_id: (c.accepted, c.rejected) for c in s.scalars(select(ReviewEditCount))}
    return current, counts


def test_maintained_tables_equal_the_history(db: Database) -> None:
    storage = get_storage()
    ids = [add_edit(db, storage, Spec(margin=m / 10), i) for i, m in enumerate(range(1, 7))]
    with db.session() as s:
        for name in ("alice", "bob"):
            auth.add_reviewer(s, name, "correct horse 42")
        tokens = {name: auth.new_token(s, name) for name in ("alice", "bob")}
    c = TestClient(create_app(db, storage, ReviewSettings(required=2)), base_url="http://127.0.0.1")

    def as_(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[name]}"}

    def check() -> None:
        current, counts = fresh_state(db)
        kept_current, kept_counts = kept_state(db)
        assert kept_current == current
        assert {e: n for e, n in kept_counts.items() if n != (0, 0)} == counts_without_zero(counts)

    def decide(name: str, edit_id: int, decision: str, tags: list[str] | None = None) -> None:
        r = c.post(f"/api/items/{edit_id}/decision", json={"decision": decision, "tags": tags or []},
                   headers=as_(name))
        assert r.status_code == 200, r.text

    decide("alice", ids[0], "reject", ["artifacts"])
    decide("bob", ids[0], "accept")
    decide("alice", ids[1], "accept")
    check()
    decide("alice", ids[1], "reject")  # a change of mind
    decide("bob", ids[1], "reject")
    check()
    assert ids[1] not in [i["edit_id"] for i in c.get("/api/items", headers=as_("alice")).json()["items"]]
    assert c.post("/api/undo", headers=as_("alice")).json()["undone"][0]["decision"] == "accepted"
    check()
    assert c.post("/api/undo", headers=as_("alice")).json()["undone"][0]["decision"] is None  # back to nothing
    check()
    # accept all visible (the page's form) and its undo, which takes the whole batch back
    page = c.get("/api/items?limit=4", headers=as_("bob")).json()
    visible = [i["edit_id"] for i in page["items"]]
    assert len(visible) == 4 and page["total_is_estimate"] is False
    login = c.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text).group(1)
    assert c.post("/login", data={"username": "bob", "password": "correct horse 42", "csrf_token": csrf},
                  follow_redirects=False).status_code == 303
    form = re.search(r'<meta name="csrf-token" content="([^"]+)">', c.get("/").text).group(1)
    r = c.post("/accept-visible", data={"csrf_token": form, "edit_id": visible}, follow_redirects=False)
    assert r.status_code == 303
    check()
    stats = c.get("/api/stats", headers=as_("alice")).json()
    current, counts = fresh_state(db)
    decided = [v for v in current.values() if v[0] in ("accepted", "rejected")]
    assert stats["decisions"] == len(decided)
    assert stats["edits_reviewed"] == sum(1 for a, r in counts.values() if a + r)
    assert stats["progress"]["reviewed"] == sum(1 for a, r in counts.values() if a + r >= 2)
    assert c.post("/undo", data={"csrf_token": form}, follow_redirects=False).status_code == 303
    check()
    with db.session() as s:  # rows written straight to the store (not through the app) are kept too
        s.add(Review(reviewer_id=1, edit_id=ids[5], decision="rejected", tags=["unsafe"]))
    check()


def counts_without_zero(counts: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
    return {e: n for e, n in counts.items() if n != (0, 0)}


def test_migration_backfills_the_maintained_tables(db: Database) -> None:
    storage = get_storage()
    ids = [add_edit(db, storage, Spec(), i) for i in range(3)]
    with db.session() as s:
        auth.add_reviewer(s, "alice", "correct horse 42")
        auth.add_reviewer(s, "bob", "correct horse 42")
    db.downgrade("0010")
    with db.session() as s:
        for reviewer, edit_id, decision in ((1, ids[0], "accepted"), (2, ids[0], "rejected"),
                                            (1, ids[0], "rejected"), (1, ids[1], "accepted"),
                                            (1, ids[1], "cleared")):
            s.add(Review(reviewer_id=reviewer, edit_id=edit_id, decision=decision, tags=[]))
            s.flush()
    db.upgrade()
    current, counts = fresh_state(db)
    kept_current, kept_counts = kept_state(db)
    assert kept_current == current and len(current) == 3
    assert counts_without_zero(kept_counts) == {ids[0]: (0, 2)}
