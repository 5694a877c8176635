"""Best-of-N on the review app (its real FastAPI app, TestClient), on SQLite and PostgreSQL: a set's
candidates side by side with their decisions, ranks and the selection's why; a person's overrule
by the page's form (CSRF) and by the API (a script's token), which changes what export writes;
clearing it; and bad requests refused without a server error."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fixtures.candidate_sets import Cand, MadeSet, add_plain, add_set, add_uncounted
from sqlalchemy import select

from common.core.settings import ReviewSettings, get_settings
from common.dataset.export import export
from common.review import auth
from common.review.app import create_app
from common.store.rows import Reviewer, Selection
from common.store.storage import get_storage

PASSWORD = "correct horse 42"


@pytest.fixture
def app(db: Any) -> dict[str, Any]:
    """The app over ``db`` with alice, her script token, a best-of-N set (candidates 0 and 1 accepted,
    0 selected; 2 rejected), a second set, and an imported edit with no selection."""
    storage = get_storage(get_settings().storage_url)
    with db.session() as s:
        auth.add_reviewer(s, "alice", PASSWORD)
        token = auth.new_token(s, "alice")
    best = add_set(db, storage, [Cand(), Cand(clip=0.28), Cand("rejected", ("identity_lost",))], 1)
    other = add_set(db, storage, [Cand(), Cand("rejected", ("clip_low",))], 2)
    plain = add_plain(db, storage, ["accepted"], 3)
    client = TestClient(create_app(db, storage, ReviewSettings()), base_url="http://127.0.0.1")
    return {"db": db, "storage": storage, "client": client, "bearer": {"Authorization": f"Bearer {token}"},
            "best": best, "other": other, "plain": plain}


def _login(c: TestClient) -> str:
    page = c.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    assert c.post("/login", data={"username": "alice", "password": PASSWORD, "csrf_token": token},
                  follow_redirects=False).status_code == 303
    return re.search(r'<meta name="csrf-token" content="([^"]+)">', c.get("/").text).group(1)  # type: ignore[union-attr]


def _selection(db: Any, made: MadeSet) -> tuple[int | None, int | None, str | None, str | None, Any]:
    """(selection step's pick, person's pick, who, note, when) of ``made``'s selection row."""
    with db.session() as s:
        sel = s.get(Selection, made.analysis_id)
        who = s.get(Reviewer, sel.person_reviewer_id) if sel.person_reviewer_id else None
        return sel.edit_id, sel.person_edit_id, who.name if who else None, sel.person_note, sel.person_at


def _exported(env: dict[str, Any], out: Path, decision: str) -> dict[int, dict[str, Any]]:
    export(env["db"], env["storage"], out, decision=decision)
    lines = (out / "train" / "metadata.jsonl").read_text().splitlines()
    return {row["edit_id"]: row for row in map(json.loads, lines)}


def test_set_page_side_by_side_and_an_overrule_by_form_changes_the_export(app: dict[str, Any], tmp_path: Path):
    c, db, best = app["client"], app["db"], app["best"]
    csrf = _login(c)
    queue = c.get("/?mine=all").text  # the queue links each candidate to its set; the imported edit has no link
    assert f'href="/sets/{best.analysis_id}?back=' in queue and "candidate 0 of 3 · selected" in queue
    assert queue.count('class="chip set-link') == 5
    page = c.get(f"/sets/{best.analysis_id}")
    assert page.status_code == 200
    for eid in best.edit_ids:  # every candidate's image, through the images router only
        assert f'src="/images/{eid}/edited"' in page.text
    assert str(app["storage"].root) not in page.text and "file://" not in page.text
    assert "candidate 0 has the highest clip_score" in page.text and "identity_lost" in page.text
    cards = re.findall(r'<article class="candidate([^"]*)"[^>]*data-edit-id="(\d+)"', page.text)
    assert [(int(e), "selected" in cls) for cls, e in cards] == [(best.edit_ids[0], True), (best.edit_ids[1], False),
                                                                  (best.edit_ids[2], False)]
    assert re.findall(r"rank (\d)", page.text) == ["1", "2", "3"]

    form = {"edit_id": best.edit_ids[1], "note": "the collar is right"}
    assert c.post(f"/sets/{best.analysis_id}/select", data=form, follow_redirects=False).status_code == 403
    assert c.post(f"/sets/{best.analysis_id}/select", data={**form, "csrf_token": "x" + csrf},
                  follow_redirects=False).status_code == 403
    assert _selection(db, best)[1] is None
    done = c.post(f"/sets/{best.analysis_id}/select", data={**form, "csrf_token": csrf}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/sets/{best.analysis_id}"
    auto, person, who, note, at = _selection(db, best)
    assert (auto, person, who, note) == (best.edit_ids[0], best.edit_ids[1], "alice", "the collar is right")
    assert at is not None
    again = c.post(f"/sets/{best.analysis_id}/select", data={**form, "csrf_token": csrf}, follow_redirects=False)
    assert again.status_code == 303 and _selection(db, best)[4] == at  # idempotent: nothing rewritten
    page = c.get(f"/sets/{best.analysis_id}").text
    assert "Overruled</strong> by alice" in page and "the collar is right" in page

    accepted = _exported(app, tmp_path / "accepted", "accepted")
    assert best.edit_ids[1] in accepted and best.edit_ids[0] not in accepted
    assert accepted[best.edit_ids[1]]["selection_by"] == "person"
    assert accepted[best.edit_ids[1]]["selection_note"] == "the collar is right"
    rejected = _exported(app, tmp_path / "rejected", "rejected")
    assert rejected[best.edit_ids[0]]["reasons"] == ["selection.not_selected"]

    cleared = c.post(f"/sets/{best.analysis_id}/clear", data={"csrf_token": csrf, "note": "my mistake"},
                     follow_redirects=False)
    assert cleared.status_code == 303
    assert _selection(db, best)[:4] == (best.edit_ids[0], None, "alice", "my mistake")  # who cleared it, and why
    assert best.edit_ids[0] in _exported(app, tmp_path / "accepted", "accepted")


def test_overrule_by_api_with_a_token_changes_the_export_and_is_idempotent(app: dict[str, Any], tmp_path: Path):
    c, bearer, best, plain = app["client"], app["bearer"], app["best"], app["plain"]
    url = f"/api/sets/{best.analysis_id}/selection"
    got = c.get(f"/api/sets/{best.analysis_id}", headers=bearer).json()
    assert got["selected_edit_id"] == best.edit_ids[0] and got["overrule"]["edit_id"] is None
    assert [(x["edit_id"], x["rank"], x["decision"], x["selected"]) for x in got["candidates"]] == [
        (best.edit_ids[0], 1, "accepted", True), (best.edit_ids[1], 2, "accepted", False),
        (best.edit_ids[2], 3, "rejected", False)]
    item = c.get(f"/api/items/{best.edit_ids[1]}", headers=bearer).json()
    assert item["set"]["analysis_id"] == best.analysis_id and item["set"]["selected"] is False
    assert "set" not in c.get(f"/api/items/{plain.edit_ids[0]}", headers=bearer).json()  # N = 1: as before

    done = c.post(url, json={"edit_id": best.edit_ids[1], "note": "sharper"}, headers=bearer)
    assert done.status_code == 200 and done.json()["changed"] is True
    assert done.json()["selected_edit_id"] == best.edit_ids[1] and done.json()["overrule"]["reviewer"] == "alice"
    again = c.post(url, json={"edit_id": best.edit_ids[1], "note": "sharper"}, headers=bearer)
    assert again.status_code == 200 and again.json()["changed"] is False
    assert again.json()["overrule"]["at"] == done.json()["overrule"]["at"]
    accepted = _exported(app, tmp_path / "accepted", "accepted")
    assert best.edit_ids[1] in accepted and best.edit_ids[0] not in accepted and plain.edit_ids[0] in accepted

    cleared = c.delete(url, headers=bearer)
    assert cleared.status_code == 200 and cleared.json()["changed"] is True
    assert cleared.json()["selected_edit_id"] == best.edit_ids[0]
    assert c.delete(url, headers=bearer).json()["changed"] is False
    accepted = _exported(app, tmp_path / "accepted", "accepted")
    assert best.edit_ids[0] in accepted and best.edit_ids[1] not in accepted


def test_bad_overrules_are_refused_and_change_nothing(app: dict[str, Any]):
    c, bearer, db, best, other = app["client"], app["bearer"], app["db"], app["best"], app["other"]
    url = f"/api/sets/{best.analysis_id}/selection"
    refused = c.post(url, json={"edit_id": other.edit_ids[1]}, headers=bearer)  # another set's candidate
    assert refused.status_code == 422 and refused.json()["code"] == "selection.not_candidate"
    assert c.post(url, json={"edit_id": app["plain"].edit_ids[0]}, headers=bearer).status_code == 422
    assert c.post(url, json={"edit_id": 99999}, headers=bearer).status_code == 422
    held_out = add_uncounted(db, app["storage"], best, 7)  # the set's analysis, but no candidate number
    assert c.post(url, json={"edit_id": held_out}, headers=bearer).status_code == 422
    listed = c.get(f"/api/sets/{best.analysis_id}", headers=bearer).json()["candidates"]
    assert [x["edit_id"] for x in listed] == best.edit_ids
    for bad in ({}, {"edit_id": "one"}, {"edit_id": 2**40}, {"edit_id": -1}, {"edit_id": best.edit_ids[1], "x": 1},
                {"edit_id": best.edit_ids[1], "note": "a\x00b"}, {"edit_id": best.edit_ids[1], "note": "n" * 2001}):
        assert c.post(url, json=bad, headers=bearer).status_code == 422, bad
    assert c.post(url, content=b"\xff\xfe{", headers={**bearer, "Content-Type": "application/json"}).status_code == 422
    for analysis in (99999, 2**40):  # no such set: 404, as for the page and the reading endpoint
        assert c.post(f"/api/sets/{analysis}/selection", json={"edit_id": best.edit_ids[1]},
                      headers=bearer).status_code == 404
        assert c.delete(f"/api/sets/{analysis}/selection", headers=bearer).status_code == 404
        assert c.get(f"/api/sets/{analysis}", headers=bearer).status_code == 404
    assert c.post(url, json={"edit_id": best.edit_ids[1]}).status_code == 401  # no login
    csrf = _login(c)  # a session needs its CSRF header on the API, and its token on the forms
    assert c.post(url, json={"edit_id": best.edit_ids[1]}).status_code == 403
    assert c.post(f"/sets/{best.analysis_id}/select", data={"edit_id": "x", "csrf_token": csrf}).status_code == 422
    assert c.post(f"/sets/{best.analysis_id}/select", data={"edit_id": other.edit_ids[0], "csrf_token": csrf},
                  follow_redirects=False).status_code == 422
    assert c.post("/sets/99999/clear", data={"csrf_token": csrf}, follow_redirects=False).status_code == 404
    assert c.get("/sets/99999").status_code == 404
    assert _selection(db, best)[1:4] == (None, None, None) and _selection(db, other)[1:4] == (None, None, None)
    with db.session() as s:  # nothing written anywhere
        assert s.scalars(select(Selection.person_edit_id).where(Selection.person_edit_id.is_not(None))).all() == []
