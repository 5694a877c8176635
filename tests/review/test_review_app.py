"""The review app against its real FastAPI app (TestClient): logins, CSRF, tokens, images by id
only, the queue's filters and order, decisions, undo and their history in the store."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from fixtures.review import Spec, add_edit
from sqlalchemy import func, select

from common.cli import main
from common.core.settings import ReviewSettings, get_settings
from common.review import auth
from common.review.app import create_app, is_loopback
from common.store.db import get_database
from common.store.rows import Review, Reviewer, ReviewLoginFailure, ReviewSession
from common.store.storage import get_storage

PASSWORD = "correct horse 42"


@pytest.fixture
def env():
    settings = get_settings()
    db = get_database(settings.database_url)
    storage = get_storage(settings.storage_url)
    with db.session() as s:
        auth.add_reviewer(s, "alice", PASSWORD)
        auth.add_reviewer(s, "bob", PASSWORD)
        auth.add_reviewer(s, "root", PASSWORD, admin=True)
    return db, storage


def client(env, **review) -> TestClient:
    db, storage = env
    return TestClient(create_app(db, storage, ReviewSettings(**review)), base_url="http://127.0.0.1")


def login(c: TestClient, name: str = "alice", password: str = PASSWORD):
    page = c.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return c.post("/login", data={"username": name, "password": password, "csrf_token": token},
                  follow_redirects=False)


def csrf_of(c: TestClient) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]+)">', c.get("/").text).group(1)


def reviews(db) -> list[tuple[str, int, str, list[str]]]:
    with db.session() as s:
        rows = s.execute(select(Reviewer.name, Review.edit_id, Review.decision, Review.tags)
                         .join(Reviewer, Reviewer.id == Review.reviewer_id).order_by(Review.id)).all()
    return [(n, e, d, list(t)) for n, e, d, t in rows]


def test_every_route_refuses_without_login(env):
    db, storage = env
    eid = add_edit(db, storage, Spec(), 1)
    app = create_app(db, storage, ReviewSettings())
    c = TestClient(app, base_url="http://127.0.0.1")
    checked = 0
    for route in app.routes:
        if not isinstance(route, APIRoute) or route.path == "/login":
            continue
        path = (route.path.replace("{edit_id:int}", str(eid)).replace("{index:int}", "0")
                .replace("{analysis_id:int}", "1"))
        for method in route.methods:
            r = c.request(method, path, follow_redirects=False,
                          json={"decision": "accept"} if path.startswith("/api/") and method == "POST" else None)
            checked += 1
            if path.startswith(("/api/", "/images/")):
                assert r.status_code == 401, (method, path, r.status_code)
            else:  # pages send people to the login page, and back afterwards
                assert r.status_code == 303, (method, path, r.status_code)
                assert r.headers["location"].startswith("/login?next=")
    assert checked >= 12
    # a cookie that opens no session, and a token that is no token, are no login either
    c.cookies.set("synthpipe_review", "forged")
    assert c.get("/api/items").status_code == 401
    assert c.get("/", follow_redirects=False).status_code == 303
    assert c.get("/api/items", headers={"Authorization": "Bearer spr_forged"}).status_code == 401
    assert reviews(db) == []


def test_login_refusals_look_alike_and_repeated_failures_wait(env):
    db, _ = env
    c = client(env, login_free_failures=3, login_backoff_s=1.0)
    wrong = login(c, "alice", "not the password")
    unknown = login(c, "mallory", PASSWORD)
    assert wrong.status_code == unknown.status_code == 401
    message = re.search(r'<p class="error" role="alert">([^<]+)</p>', wrong.text).group(1)
    assert message == re.search(r'<p class="error" role="alert">([^<]+)</p>', unknown.text).group(1)
    assert "alice" not in message and "mallory" not in message
    assert login(c, "alice", "still wrong").status_code == 401  # third failure from this address
    # now even the right password waits: the try is not looked at
    held = login(c, "alice", PASSWORD)
    assert held.status_code == 429 and int(held.headers["Retry-After"]) >= 1
    assert "synthpipe_review" not in held.cookies
    other = login(c, "bob", PASSWORD)  # the address is held too, whatever the name
    assert other.status_code == 429
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(ReviewLoginFailure)) == 3
    time.sleep(1.1)  # past the wait: the right password opens a session
    ok = login(c, "alice", PASSWORD)
    assert ok.status_code == 303 and ok.headers["location"] == "/"
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    page = c.get("/")  # every page forbids inline script, framing and foreign origins
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text  # scripts come from /static, which the policy allows
    with db.session() as s:  # the cookie's value is not what is stored
        stored = s.scalars(select(ReviewSession.token_hash)).all()
    assert len(stored) == 1 and c.cookies["synthpipe_review"] not in stored


def test_csrf_on_every_form_post(env):
    db, storage = env
    eid = add_edit(db, storage, Spec(), 1)
    c = client(env)
    page = c.get("/login")
    assert c.post("/login", data={"username": "alice", "password": PASSWORD}).status_code == 403
    assert c.post("/login", data={"username": "alice", "password": PASSWORD, "csrf_token": "guess"}).status_code == 403
    assert "synthpipe_review" not in c.cookies
    assert login(c).status_code == 303
    token = csrf_of(c)
    assert token not in page.text
    for path, data in (("/decide", {"edit_id": eid, "decision": "accept"}), ("/undo", {}),
                       ("/accept-visible", {"edit_id": eid}), ("/logout", {})):
        assert c.post(path, data=data, follow_redirects=False).status_code == 403, path
        assert c.post(path, data={**data, "csrf_token": "x" + token}, follow_redirects=False).status_code == 403, path
    # the API with a cookie needs the header; a script's token needs none
    assert c.post(f"/api/items/{eid}/decision", json={"decision": "accept"}).status_code == 403
    assert reviews(db) == []
    r = c.post("/decide", data={"edit_id": eid, "decision": "reject", "tags": "artifacts", "csrf_token": token},
               follow_redirects=False)
    assert r.status_code == 303
    assert reviews(db) == [("alice", eid, "rejected", ["artifacts"])]
    assert c.post(f"/api/items/{eid}/decision", json={"decision": "accept"},
                  headers={"X-CSRF-Token": token}).status_code == 200
    assert reviews(db)[-1] == ("alice", eid, "accepted", [])
    # logging out ends the session in the store, not only in the browser
    old = c.cookies["synthpipe_review"]
    assert c.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    c.cookies.set("synthpipe_review", old)
    assert c.get("/api/items").status_code == 401


def test_images_only_by_edit_id(env, tmp_path: Path):
    db, storage = env
    eid = add_edit(db, storage, Spec(garments=1), 1)
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    c = client(env)
    login(c)
    ok = c.get(f"/images/{eid}/input")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png" and ok.content[:4] == b"\x89PNG"
    assert c.get(f"/images/{eid}/edited").content != ok.content
    assert c.get(f"/images/{eid}/garment/0").status_code == 200
    rel = "..%2F" * 12 + str(secret).lstrip("/").replace("/", "%2F")
    attempts = [f"/images/{eid}/garment/1", f"/images/{eid}/garment/-1", "/images/999/input",
                "/images/abc/input", f"/images/{eid}/other", f"/images/{eid}/input/../../../{secret}",
                f"/images/{eid}/{rel}", f"/images/{rel}/input", f"/images/{eid}/garment/{rel}",
                f"/images/{eid}%2F..%2F..%2Finput", "/images/" + "%2e%2e/" * 8 + str(secret).lstrip("/"),
                "/static/" + "..%2F" * 6 + str(secret).lstrip("/"), "/static/../app.py", "/static/%2e%2e/app.py",
                f"/images/{eid}/input?uri=file://{secret}", f"/images/{eid}/input?path={secret}"]
    for path in attempts:
        r = c.get(path)
        assert b"top secret" not in r.content, path
        assert b"import" not in r.content, path
        if "?" in path:  # query strings are ignored: the edit's own image comes back
            assert r.content == ok.content, path
        else:
            assert r.status_code == 404, (path, r.status_code)


def test_api_decisions_by_token_and_bad_input(env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    db, storage = env
    eid = add_edit(db, storage, Spec(), 1)
    assert main(["review", "token", "alice"]) == 0
    token = capsys.readouterr().out.strip()
    with db.session() as s:  # only its hash is stored
        stored = s.scalar(select(Reviewer.token_hash).where(Reviewer.name == "alice"))
    assert token.startswith("spr_") and stored == auth.sha256_hex(token) and token not in stored
    c = client(env)
    bearer = {"Authorization": f"Bearer {token}"}
    listed = c.get("/api/items", headers=bearer)
    assert listed.status_code == 200 and [i["edit_id"] for i in listed.json()["items"]] == [eid]
    assert c.post("/api/items/999/decision", json={"decision": "accept"}, headers=bearer).status_code == 404
    assert c.get("/api/items/999", headers=bearer).status_code == 404
    for bad in ({"decision": "maybe"}, {"decision": "accepted"}, {}, {"decision": "accept", "tags": ["nope"]},
                {"decision": "accept", "extra": 1}, {"decision": "accept", "tags": "artifacts"}):
        assert c.post(f"/api/items/{eid}/decision", json=bad, headers=bearer).status_code == 422, bad
    assert c.post(f"/api/items/{eid}/decision", content=b"{not json", headers=bearer).status_code == 422
    assert c.get("/api/items?ai=perhaps", headers=bearer).status_code == 422
    assert c.get("/api/items?score_min=low", headers=bearer).status_code == 422
    assert reviews(db) == []
    r = c.post(f"/api/items/{eid}/decision", json={"decision": "reject", "tags": ["unsafe", "artifacts"]},
               headers=bearer)
    assert r.status_code == 200 and r.json()["decision"] == "rejected"
    assert reviews(db) == [("alice", eid, "rejected", ["artifacts", "unsafe"])]  # in the configured order
    # a new token replaces the old one
    assert main(["review", "token", "alice"]) == 0
    assert c.get("/api/items", headers=bearer).status_code == 401
    assert main(["review", "token", "nobody"]) == 2


def test_cli_reviewers_and_loopback(env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    db, _ = env
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-enough\n"))
    assert main(["review", "add-reviewer", "carol", "--admin"]) == 0
    with db.session() as s:
        carol = s.scalar(select(Reviewer).where(Reviewer.name == "carol"))
        assert carol.is_admin and carol.password_hash.startswith("$argon2id$")
        assert "s3cret-enough" not in carol.password_hash
        assert auth.verify_password(carol, "s3cret-enough") and not auth.verify_password(carol, "s3cret-enougH")
    monkeypatch.setattr("sys.stdin", io.StringIO("another-password\n"))
    assert main(["review", "add-reviewer", "carol"]) == 2
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["review", "add-reviewer", "dave"]) == 2
    capsys.readouterr()
    for host in ("0.0.0.0", "192.168.1.20", "::", "example.com"):
        assert main(["review", "--host", host, "--port", "8799"]) == 2
        assert "--public" in capsys.readouterr().err
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.5", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "::", "example.com", "127.0.0.1.example.com"))


def test_queue_filters_order_and_required_reviewers(env):
    db, storage = env
    e = {
        "far": add_edit(db, storage, Spec(margin=0.4, clip=0.40), 1),
        "near": add_edit(db, storage, Spec(ai="rejected", reasons=("identity_lost",), margin=0.01, clip=0.21), 2),
        "mid": add_edit(db, storage, Spec(ai="rejected", reasons=("garment_missing",), margin=0.05, clip=0.24,
                                          site="shop-b", category="magazine"), 3),
        "enrich": add_edit(db, storage, Spec(recipe="enrich", margin=0.2, clip=0.33, site=None, category=None), 4),
        "undecided": add_edit(db, storage, Spec(ai=None, clip=0.5), 5),
    }
    c = client(env, required=2)
    login(c, "alice")
    token = csrf_of(c)

    def ids(query: str = "") -> list[int]:
        r = c.get("/api/items" + query)
        assert r.status_code == 200, r.text
        return [i["edit_id"] for i in r.json()["items"]]

    # least certain first, not yet decided last
    assert ids() == [e["near"], e["mid"], e["enrich"], e["far"], e["undecided"]]
    assert ids("?sort=newest") == sorted(e.values(), reverse=True)
    assert ids("?recipe=enrich") == [e["enrich"]]
    assert ids("?site=shop-b") == [e["mid"]] and ids("?category=magazine") == [e["mid"]]
    assert ids("?ai=rejected") == [e["near"], e["mid"]]
    assert ids("?ai=none") == [e["undecided"]]
    assert ids("?reason=identity_lost") == [e["near"]] and ids("?reason=identity") == []
    assert ids("?reason=identity_los_") == []  # a LIKE wildcard is a plain character here
    assert ids("?score=clip.clip_score&score_min=0.3&score_max=0.45") == [e["enrich"], e["far"]]
    assert ids("?score=clip.clip_score&score_max=0.22") == [e["near"]]
    assert ids("?limit=2&offset=1") == [e["mid"], e["enrich"]]
    item = c.get(f"/api/items/{e['near']}").json()
    assert item["ai"] == {"decision": "rejected", "reasons": ["identity_lost"], "margin": 0.01,
                          "failed": {"identity_lost": {"metric": "clip_score", "value": 0.21, "threshold": 0.25}}}
    assert item["scores"] == {"clip": {"metrics": {"clip_score": 0.21}}}
    assert item["images"]["garments"] == [f"/images/{e['near']}/garment/0"]
    assert item["edit_prompt"] == "make edit 2 look right"
    page = c.get("/")
    for eid in e.values():
        assert f'data-edit-id="{eid}"' in page.text

    post = {"headers": {"X-CSRF-Token": token}}
    assert c.post(f"/api/items/{e['near']}/decision", json={"decision": "reject"}, **post).status_code == 200
    assert e["near"] not in ids() and ids("?mine=done") == [e["near"]]
    progress = c.get("/api/items").json()["progress"]
    assert progress == {"edits": 5, "reviewed": 0, "remaining": 5, "mine": 1, "required": 2}
    # two reviewers are required: bob still sees it, and once he decided, nobody else does
    bob = client(env, required=2)
    login(bob, "bob")
    assert e["near"] in [i["edit_id"] for i in bob.get("/api/items").json()["items"]]
    assert bob.post(f"/api/items/{e['near']}/decision", json={"decision": "accept"},
                    headers={"X-CSRF-Token": csrf_of(bob)}).status_code == 200
    root = client(env, required=2)
    login(root, "root")
    listed = root.get("/api/items?mine=all").json()
    assert e["near"] not in [i["edit_id"] for i in root.get("/api/items").json()["items"]]
    assert listed["progress"]["reviewed"] == 1
    near = next(i for i in listed["items"] if i["edit_id"] == e["near"])  # admins see who decided what
    assert sorted((o["reviewer"], o["decision"]) for o in near["others"]) == [("alice", "rejected"), ("bob", "accepted")]
    assert "others" not in c.get(f"/api/items/{e['near']}").json()


def test_undo_adds_rows_and_accept_all_visible(env):
    db, storage = env
    a, b, d = (add_edit(db, storage, Spec(margin=m), i) for i, m in ((1, 0.1), (2, 0.2), (3, 0.3)))
    c = client(env)
    login(c)
    h = {"X-CSRF-Token": csrf_of(c)}
    c.post(f"/api/items/{a}/decision", json={"decision": "accept"}, headers=h)
    c.post(f"/api/items/{b}/decision", json={"decision": "reject", "tags": ["wrong_garment"]}, headers=h)
    c.post(f"/api/items/{b}/decision", json={"decision": "accept"}, headers=h)  # a change of mind
    undone = c.post("/api/undo", headers=h).json()["undone"]
    assert undone == [{"edit_id": b, "decision": "rejected", "tags": ["wrong_garment"], "note": None, "review_id": 4}]
    assert c.post("/api/undo", headers=h).json()["undone"][0]["decision"] is None
    assert c.post("/api/undo", headers=h).json()["undone"] == [{"edit_id": a, "decision": None, "tags": [],
                                                              "note": None, "review_id": 6}]
    assert c.post("/api/undo", headers=h).json()["undone"] == []
    rows = reviews(db)
    assert [r[2] for r in rows] == ["accepted", "rejected", "accepted", "rejected", "cleared", "cleared"]
    assert c.get("/api/items?mine=done").json()["items"] == []
    # accept all visible: only what I have not decided; one undo takes the whole batch back
    c.post(f"/api/items/{d}/decision", json={"decision": "reject"}, headers=h)
    page = c.get("/")
    visible = re.findall(r'<input type="hidden" name="edit_id" value="(\d+)">', page.text.split('id="accept-visible"')[1].split("</form>")[0])
    assert sorted(map(int, visible)) == [a, b]  # d was decided, so the pending queue no longer shows it
    r = c.post("/accept-visible", data={"csrf_token": h["X-CSRF-Token"], "edit_id": [a, b, d]}, follow_redirects=False)
    assert r.status_code == 303
    assert [(e, dec) for _, e, dec, _ in reviews(db)[-2:]] == [(a, "accepted"), (b, "accepted")]
    assert reviews(db)[-3][1:3] == (d, "rejected")  # my rejection was not overwritten
    assert sorted(u["edit_id"] for u in c.post("/api/undo", headers=h).json()["undone"]) == [a, b]
    assert [i["edit_id"] for i in c.get("/api/items?mine=done").json()["items"]] == [d]
    assert len(reviews(db)) == 11  # nothing is ever deleted


def test_review_command_serves_on_loopback(env, tmp_path: Path):
    """`synthpipe review` as a real process: uvicorn on 127.0.0.1, the login page up, the API shut."""
    import os
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "common.cli", "review", "--port", str(port)],
                            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/login", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "review page did not come up"
                time.sleep(0.2)
        assert page.status_code == 200 and 'name="username"' in page.text and 'name="password"' in page.text
        assert httpx.get(f"http://127.0.0.1:{port}/api/items").status_code == 401
        listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
        local = [line.split()[3] for line in listening.splitlines()]  # State Recv-Q Send-Q Local Peer
        assert local == [f"127.0.0.1:{port}"]
    finally:
        proc.terminate()
        proc.wait(10)
