"""The review API on PostgreSQL while edits and their decisions keep arriving (as from a
score worker): every listing is consistent, decisions land, nothing is lost."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient
from fixtures.review import Spec, add_edit

from common.core.settings import ReviewSettings, reset_settings
from common.domain.final_decision import final_decisions
from common.review import auth
from common.review.app import create_app
from common.store.db import get_database
from common.store.storage import get_storage

pytestmark = pytest.mark.postgres
N = 24


def test_review_api_while_edits_arrive(pg_url: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SYNTHPIPE_DATABASE_URL", pg_url)
    reset_settings()
    db = get_database(pg_url, ensure=False)
    db.upgrade()
    assert db.dialect == "postgresql"
    storage = get_storage()
    with db.session() as s:
        auth.add_reviewer(s, "alice", "password-alice")
        token = auth.new_token(s, "alice")
    errors: list[BaseException] = []
    done = threading.Event()

    def score_worker() -> None:
        try:
            for i in range(N):
                add_edit(db, storage, Spec(ai="rejected" if i % 3 == 0 else "accepted",
                                           reasons=("identity_lost",) if i % 3 == 0 else (),
                                           margin=(i * 7 % N) / N, site=f"shop-{i % 2}"), i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
        finally:
            done.set()

    c = TestClient(create_app(db, storage, ReviewSettings()), base_url="http://127.0.0.1")
    h = {"Authorization": f"Bearer {token}"}
    worker = threading.Thread(target=score_worker)
    worker.start()
    seen_totals, decided = [], []
    while not done.is_set() or len(seen_totals) < 3:
        r = c.get("/api/items?mine=all&limit=200", headers=h)
        assert r.status_code == 200, r.text
        body = r.json()
        items = body["items"]
        assert body["total"] == len(items)  # count and page come from one consistent view
        margins = [i["ai"]["margin"] for i in items]
        assert margins == sorted(margins)  # least certain first, on a growing queue
        assert all(i["ai"] is not None and i["scores"]["clip"]["metrics"] for i in items)
        seen_totals.append(body["total"])
        undecided = [i["edit_id"] for i in items if i["mine"] is None]
        if undecided:  # a reviewer working along
            d = c.post(f"/api/items/{undecided[0]}/decision", json={"decision": "reject", "tags": ["artifacts"]},
                       headers=h)
            assert d.status_code == 200, d.text
            decided.append(undecided[0])
        f = c.get("/api/items?site=shop-1&ai=rejected&mine=all", headers=h)
        assert f.status_code == 200
        assert all(i["site"] == "shop-1" and i["ai"]["decision"] == "rejected" for i in f.json()["items"])
    worker.join(60)
    assert not errors, errors
    assert seen_totals == sorted(seen_totals) and seen_totals[-1] <= N  # the queue only grows
    assert len(seen_totals) >= 3 and decided
    final = c.get("/api/items?mine=all&limit=200", headers=h).json()
    assert final["total"] == N and final["progress"]["mine"] == len(set(decided))
    with db.session() as s:
        finals = final_decisions(s)
    assert len(finals) == N
    assert {e for e, f in finals.items() if f.source == "human"} == set(decided)
    assert all(finals[e].decision == "rejected" and finals[e].review_tags == ["artifacts"] for e in decided)
