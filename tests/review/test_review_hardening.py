"""The review app answers what it cannot store or read with a 4xx, never a 500: page numbers
that are no numbers, ids beyond 64 bits, bodies that are not UTF-8, NUL characters (PostgreSQL
text cannot hold one), bodies over ``review.max_body_bytes`` (refused before they are read);
and reviewer names that differ only by case or width are one account. Every test runs on
SQLite and on PostgreSQL, against the real app."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from common.cli import main
from common.core.settings import ReviewSettings, get_settings
from common.review import auth
from common.review.app import create_app
from common.store.db import Database
from common.store.rows import Review, Reviewer, ReviewLoginFailure, ReviewSession
from common.store.storage import Storage, get_storage

try:
    from fixtures.review import Spec, add_edit
except ImportError:  # the helpers' home before tests/fixtures/
    from review_helpers import Spec, add_edit  # type: ignore[no-redef]

PASSWORD = "a long enough password"
BIG = "99999999999999999999999"  # far beyond 64 bits
FILTERS = ("recipe", "site", "category", "reason", "score")


@dataclass(frozen=True)
class Env:
    db: Database
    storage: Storage
    token: str
    edit_id: int

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def env(db: Database) -> Env:
    storage = get_storage(get_settings().storage_url)
    with db.session() as s:
        auth.add_reviewer(s, "alice", PASSWORD)
        token = auth.new_token(s, "alice")
    return Env(db, storage, token, add_edit(db, storage, Spec(), 1))


def client(env: Env, **review: object) -> TestClient:
    """The real app; a server error comes back as a 500 answer, for the assertions to name."""
    app = create_app(env.db, env.storage, ReviewSettings(**review))  # type: ignore[arg-type]
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


def login(c: TestClient, name: str = "alice", password: str = PASSWORD) -> httpx.Response:
    page = c.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    return c.post("/login", data={"username": name, "password": password, "csrf_token": token},
                  follow_redirects=False)


def csrf_of(c: TestClient) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]+)">', c.get("/").text).group(1)  # type: ignore[union-attr]


def n_reviews(env: Env) -> int:
    with env.db.session() as s:
        return s.scalar(select(func.count()).select_from(Review)) or 0


def test_queue_page_numbers_must_be_finite_and_in_range(env: Env):
    c = client(env)
    assert login(c).status_code == 303
    for query in ("limit=nan", "limit=inf", "limit=-inf", "limit=1e400", "offset=1e19", "offset=-1e19",
                  "offset=-1", f"offset={2**63}", "offset=nan", "score_min=nan", "score_max=inf"):
        api = c.get(f"/api/items?{query}", headers=env.bearer)
        assert api.status_code == 422, (query, api.status_code, api.text)
        assert query.split("=")[0] in api.json()["detail"]
        page = c.get(f"/?{query}")  # the page shows the error and the unfiltered queue
        assert page.status_code == 422, (query, page.status_code)
        assert 'role="alert"' in page.text and f'data-edit-id="{env.edit_id}"' in page.text
    # the largest offset both databases take is a page past the end, not an error
    last = c.get(f"/api/items?offset={2**63 - 1}", headers=env.bearer)
    assert last.status_code == 200 and last.json()["items"] == [] and last.json()["total"] == 1
    assert [i["edit_id"] for i in c.get("/api/items?limit=1e1", headers=env.bearer).json()["items"]] == [env.edit_id]


def test_ids_beyond_64_bits_name_no_edit(env: Env):
    c = client(env)
    assert login(c).status_code == 303
    token = csrf_of(c)
    # edits.id is 32-bit on PostgreSQL and 64-bit on SQLite: every one of these names no edit
    for big in (BIG, str(2**64), str(2**63), str(2**63 - 1), str(2**31), str(2**31 - 1)):
        assert c.get(f"/api/items/{big}", headers=env.bearer).status_code == 404, big
        r = c.post(f"/api/items/{big}/decision", json={"decision": "accept"}, headers=env.bearer)
        assert r.status_code == 404 and r.json()["detail"] == f"no edit {big}", (big, r.text)
        for slot in ("input", "edited", "garment/0"):
            assert c.get(f"/images/{big}/{slot}", headers=env.bearer).status_code == 404, (big, slot)
        assert c.get(f"/images/{env.edit_id}/garment/{big}", headers=env.bearer).status_code == 404, big
        assert c.post("/decide", data={"edit_id": big, "decision": "accept", "csrf_token": token},
                      follow_redirects=False).status_code == 404, big
        # one unknown id refuses the whole batch: the known one is not accepted either
        assert c.post("/accept-visible", data={"edit_id": [str(env.edit_id), big], "csrf_token": token},
                      follow_redirects=False).status_code == 404, big
    assert n_reviews(env) == 0
    assert c.get(f"/images/{env.edit_id}/input", headers=env.bearer).status_code == 200


def test_bodies_that_are_not_utf8_are_refused(env: Env):
    c = client(env)
    assert login(c).status_code == 303
    token = csrf_of(c)
    decision = f"/api/items/{env.edit_id}/decision"
    json_type = {**env.bearer, "Content-Type": "application/json"}
    for body in (b'\xff\xfe{"decision": "accept"}', b'{"decision": "accept", "note": "caf\xe9"}',
                 '{"decision": "accept"}'.encode("utf-16")):
        r = c.post(decision, content=body, headers=json_type)
        assert r.status_code == 422, (body, r.status_code, r.text)
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    fields = f"csrf_token={token}&edit_id={env.edit_id}&decision=reject".encode()
    # URL-encoded forms are ASCII with UTF-8 %-escapes (as browsers send them)
    for body in (fields + b"&note=%FF%FE", fields + b"&note=caf\xe9", fields + b"&tags=%C3",
                 fields + "&note=café".encode()):
        r = c.post("/decide", content=body, headers=form_type, follow_redirects=False)
        assert r.status_code == 422, (body, r.status_code, r.text)
    multipart = c.post("/decide", files={"note": ("note", b"caf\xe9", "text/plain")},
                       data={"csrf_token": token, "edit_id": str(env.edit_id), "decision": "reject"},
                       follow_redirects=False)
    assert multipart.status_code == 422, multipart.text
    assert n_reviews(env) == 0
    # UTF-8 goes through, as typed
    ok = c.post("/decide", content=fields + b"&" + urlencode({"note": "café ✓"}).encode(), headers=form_type,
                follow_redirects=False)
    assert ok.status_code == 303
    with env.db.session() as s:
        assert s.scalars(select(Review.note)).all() == ["café ✓"]


def test_nul_characters_are_refused_before_the_database(env: Env):
    c = client(env)
    assert login(c).status_code == 303
    token = csrf_of(c)
    decision = f"/api/items/{env.edit_id}/decision"
    r = c.post(decision, json={"decision": "reject", "note": "left\x00right"}, headers=env.bearer)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["note"], r.text
    r = c.post("/decide", data={"edit_id": str(env.edit_id), "decision": "reject", "note": "a\x00b",
                                "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 422 and "note" in r.json()["detail"], r.text
    for key in FILTERS:
        value = "clip.clip\x00score" if key == "score" else "shop\x00a"
        api = c.get("/api/items", params={key: value, "score_min": "0"}, headers=env.bearer)
        assert api.status_code == 422 and key in api.json()["detail"], (key, api.status_code, api.text)
        page = c.get("/", params={key: value})
        assert page.status_code == 422 and 'role="alert"' in page.text, (key, page.status_code)
    assert n_reviews(env) == 0
    # a login name with a NUL is no name: refused as such, and no failure is recorded under it
    other = client(env)
    refused = login(other, "ali\x00ce")
    assert refused.status_code == 422 and 'role="alert"' in refused.text
    assert "synthpipe_review" not in other.cookies
    assert login(other, "alice", "wrong\x00password").status_code == 401  # a password is never stored
    with env.db.session() as s:
        assert s.scalars(select(ReviewLoginFailure.name)).all() == ["alice"]
    assert c.post(decision, json={"decision": "reject", "note": "fine"}, headers=env.bearer).status_code == 200


async def _stream(app: object, path: str, headers: dict[str, str], chunk: bytes, n: int) -> tuple[int, int, str]:
    """POST ``n`` chunks to the app in-process, as they are asked for: (status, chunks the app
    pulled, Content-Security-Policy of the answer)."""
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(n):
            pulled += 1
            yield chunk

    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as ac:
        r = await ac.post(path, content=body(), headers=headers)
    return r.status_code, pulled, r.headers.get("content-security-policy", "")


def test_request_bodies_over_the_limit_are_refused_before_they_are_read(env: Env):
    limit = 4096
    c = client(env, max_body_bytes=limit)
    decision = f"/api/items/{env.edit_id}/decision"
    json_type = {**env.bearer, "Content-Type": "application/json"}
    exact = b'{"decision": "reject"}'.ljust(limit)  # JSON may end in spaces: exactly at the limit
    over = exact + b" "
    r = c.post(decision, content=over, headers=json_type)
    assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"], r.text
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]  # still our answer
    assert n_reviews(env) == 0
    assert c.post(decision, content=exact, headers=json_type).status_code == 200

    app = create_app(env.db, env.storage, ReviewSettings(max_body_bytes=limit))
    mib = b" " * (1 << 20)
    # 200 MB announced by Content-Length: refused without pulling a byte
    status, pulled, csp = asyncio.run(_stream(app, decision, {**json_type, "Content-Length": str(200 << 20)},
                                              mib, 200))
    assert (status, pulled) == (413, 0) and csp
    # 200 MB sent chunked (no length): refused once the bytes received pass the limit
    small = b" " * 1000
    status, pulled, _ = asyncio.run(_stream(app, decision, json_type, small, 200_000))
    assert status == 413 and pulled <= limit // len(small) + 1, pulled
    # the same for a form post by a logged-in person (login by the app, its cookie and token)
    assert login(c).status_code == 303
    cookie = {"Cookie": f"synthpipe_review={c.cookies['synthpipe_review']}",
              "Content-Type": "application/x-www-form-urlencoded"}
    form = f"csrf_token={csrf_of(c)}&edit_id={env.edit_id}&decision=accept&note=".encode() + b"x" * 1000
    status, pulled, _ = asyncio.run(_stream(app, "/decide", cookie, form, 200_000))
    assert status == 413 and pulled <= limit // len(form) + 1, pulled
    assert n_reviews(env) == 1  # only the decision at the limit
    # the default limit (1 MiB) holds too
    default = client(env)
    big = b'{"decision": "accept"}'.ljust((1 << 20) + 1)
    assert default.post(decision, content=big, headers=json_type).status_code == 413


def test_names_differing_by_case_or_width_are_one_account(env: Env, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]):
    for spelling in ("Alice", "ALICE", "ａｌｉｃｅ", " alice "):
        monkeypatch.setattr("sys.stdin", io.StringIO("another long password\n"))
        assert main(["review", "add-reviewer", spelling]) == 2, spelling
        err = capsys.readouterr().err
        assert "exists already" in err and "alice" in err, err
    monkeypatch.setattr("sys.stdin", io.StringIO("carols password\n"))
    assert main(["review", "add-reviewer", "Ｃarol"]) == 0
    assert "added reviewer carol" in capsys.readouterr().err
    with env.db.session() as s:  # stored folded, so the unique name keeps spellings apart
        assert sorted(s.scalars(select(Reviewer.name))) == ["alice", "carol"]
        alice_id = s.scalar(select(Reviewer.id).where(Reviewer.name == "alice"))
        # a name stored before names were folded
        s.add(Reviewer(name="Dave", password_hash=auth._hasher.hash(PASSWORD)))
    for name, password, owner in (("Alice", PASSWORD, "alice"), ("ａｌｉｃｅ", PASSWORD, "alice"),
                                  ("CAROL", "carols password", "carol"), ("dave", PASSWORD, "Dave"),
                                  ("ＤＡＶＥ", PASSWORD, "Dave")):
        c = client(env)
        r = login(c, name, password)
        assert r.status_code == 303, (name, r.status_code)
        with env.db.session() as s:
            cookie_hash = auth.sha256_hex(c.cookies["synthpipe_review"])
            reviewer_id = s.scalar(select(ReviewSession.reviewer_id).where(ReviewSession.token_hash == cookie_hash))
            assert s.get(Reviewer, reviewer_id).name == owner, name  # type: ignore[union-attr]
    monkeypatch.setattr("sys.stdin", io.StringIO("another long password\n"))
    assert main(["review", "add-reviewer", "dave"]) == 2
    assert "Dave" in capsys.readouterr().err
    assert main(["review", "token", "DAVE"]) == 0
    capsys.readouterr()
    # failed logins count under the folded name, whatever the spelling
    c = client(env)
    for name in ("Alice", "ａｌｉｃｅ", "ALICE"):
        assert login(c, name, "not the password").status_code == 401
    with env.db.session() as s:
        assert s.scalars(select(ReviewLoginFailure.name)).all() == ["alice"] * 3
        assert s.scalar(select(func.count()).select_from(Reviewer)) == 3
        assert s.scalar(select(func.count()).select_from(ReviewSession).where(
            ReviewSession.reviewer_id == alice_id)) == 2
