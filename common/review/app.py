"""The review web app: pages for people, a JSON API for scripts, images by edit id only.

Pages need a login (else a redirect to /login); the API takes the same session cookie or a
script token (``Authorization: Bearer …``), else 401. Every form POST carries the form's
CSRF token (a session's own, or before login a cookie's), and so does every API POST made with
a cookie (``X-CSRF-Token``); token requests need none (no browser sends a token by itself).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from common.core.errors import InputError
from common.core.settings import ReviewSettings
from common.domain import review_queue as queries
from common.domain.agreement import agreement_summary
from common.review import auth
from common.store.db import Database
from common.store.storage import Storage

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "synthpipe_review"
LOGIN_CSRF_COOKIE = "synthpipe_login_csrf"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
IMAGE_TYPES = {"jpeg": "image/jpeg", "jpg": "image/jpeg", "png": "image/png", "webp": "image/webp",
               "gif": "image/gif", "bmp": "image/bmp", "tiff": "image/tiff", "tif": "image/tiff"}


class NotLoggedIn(Exception):
    def __init__(self, api: bool, path: str) -> None:
        self.api, self.path = api, path


class Forbidden(Exception):
    """A POST without its CSRF token."""


class _UnknownEditError(Exception):
    def __init__(self, edit_id: int) -> None:
        self.edit_id = edit_id


@dataclass(frozen=True)
class Principal:
    reviewer_id: int
    name: str
    is_admin: bool
    csrf: str | None  # None: authenticated by token
    via: Literal["session", "token"]


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["accept", "reject"]
    tags: list[str] = Field(default_factory=list, max_length=9)
    note: str | None = Field(None, max_length=2000)


def _safe_next(value: str | None) -> str:
    """Only a path on this site: no scheme, no host, no ``//`` (an open redirect otherwise)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _principal(request: Request, api: bool) -> Principal:
    db: Database = request.app.state.db
    header = request.headers.get("authorization", "")
    cookie = request.cookies.get(SESSION_COOKIE)
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    with db.session() as s:
        if header.lower().startswith("bearer ") and api:
            reviewer = auth.reviewer_for_token(s, header[7:].strip())
            if reviewer is not None:
                return Principal(reviewer.id, reviewer.name, reviewer.is_admin, None, "token")
            raise NotLoggedIn(True, path)
        found = auth.find_session(s, cookie) if cookie else None
        if found is None:
            raise NotLoggedIn(api, path)
        reviewer, row = found
        return Principal(reviewer.id, reviewer.name, reviewer.is_admin, row.csrf_token, "session")


def page_user(request: Request) -> Principal:
    """Pages: a session, else a redirect to the login page."""
    return _principal(request, api=False)


def api_user(request: Request) -> Principal:
    """The API and images: a session or a token, else 401 (an <img> cannot follow a login)."""
    return _principal(request, api=True)


PageUser = Annotated[Principal, Depends(page_user)]
ApiUser = Annotated[Principal, Depends(api_user)]


def create_app(db: Database, storage: Storage, settings: ReviewSettings) -> FastAPI:
    app = FastAPI(title="synthpipe review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.db = db
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["label"] = lambda code: str(code).replace("_", " ")
    templates.env.filters["pretty"] = lambda obj: json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    tags = list(settings.tags)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(NotLoggedIn)
    async def _not_logged_in(request: Request, exc: NotLoggedIn) -> Response:
        if exc.api:
            return JSONResponse({"detail": "not logged in: log in, or send Authorization: Bearer TOKEN"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return RedirectResponse("/login?" + urlencode({"next": exc.path}), status_code=303)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        return JSONResponse({"detail": "missing or wrong CSRF token: reload the page"}, status_code=403)

    def check_api_csrf(request: Request, who: Principal) -> None:
        if who.via == "session" and not auth.same_secret(request.headers.get("x-csrf-token"), who.csrf):
            raise Forbidden()

    async def form_of(request: Request, who: Principal | None) -> Any:
        form = await request.form()
        expected = who.csrf if who else request.cookies.get(LOGIN_CSRF_COOKIE)
        if not auth.same_secret(str(form.get("csrf_token") or ""), expected):
            raise Forbidden()
        return form

    # --- login ---------------------------------------------------------------------------

    def _login_page(request: Request, error: str | None = None, status: int = 200,
                    headers: dict[str, str] | None = None) -> Response:
        token = auth.new_secret()
        response = templates.TemplateResponse(request, "login.html", {
            "csrf": token, "error": error, "next": _safe_next(request.query_params.get("next"))},
            status_code=status, headers=headers)
        response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", path="/login",
                            secure=request.url.scheme == "https")
        return response

    @app.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request) -> Response:
        return _login_page(request)

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await form_of(request, None)
        name, password = str(form.get("username") or ""), str(form.get("password") or "")
        address = request.client.host if request.client else "unknown"

        def check() -> tuple[str | None, float]:
            with db.session() as s:
                result = auth.attempt_login(s, name, password, address, settings)
                if not result.ok:
                    return None, result.retry_after_s
                assert result.reviewer is not None
                cookie, _ = auth.open_session(s, result.reviewer, settings)
                return cookie, 0.0

        cookie, wait = await run_in_threadpool(check)
        if wait > 0:
            return _login_page(request, f"Too many failed logins: try again in {auth.retry_after_header(wait)} s.",
                               429, {"Retry-After": auth.retry_after_header(wait)})
        if cookie is None:
            return _login_page(request, auth.LOGIN_REFUSED, 401)
        response = RedirectResponse(_safe_next(str(form.get("next") or "/")), status_code=303)
        response.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="lax", path="/",
                            max_age=int(settings.session_ttl_s), secure=request.url.scheme == "https")
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
        return response

    @app.post("/logout")
    async def logout(request: Request, who: PageUser) -> Response:
        await form_of(request, who)
        cookie = request.cookies.get(SESSION_COOKIE, "")

        def close() -> None:
            with db.session() as s:
                auth.close_session(s, cookie)

        await run_in_threadpool(close)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # --- the queue -----------------------------------------------------------------------

    def _filter(params: Any) -> tuple[queries.QueueFilter, int, int]:
        def number(key: str) -> float | None:
            raw = params.get(key)
            if raw in (None, ""):
                return None
            try:
                return float(raw)
            except ValueError:
                raise InputError(f"{key} must be a number, got {raw!r}") from None

        def choice(key: str, allowed: tuple[str, ...], default: str | None) -> Any:
            raw = params.get(key) or default
            if raw is not None and raw not in allowed:
                raise InputError(f"{key} must be one of {', '.join(allowed)}, got {raw!r}")
            return raw

        scorer, metric = queries.parse_score_key(params.get("score"))
        f = queries.QueueFilter(
            recipe=params.get("recipe") or None, site=params.get("site") or None,
            category=params.get("category") or None, ai=choice("ai", queries.AI_FILTERS, None),
            reason=params.get("reason") or None, scorer=scorer, metric=metric,
            score_min=number("score_min"), score_max=number("score_max"),
            mine=choice("mine", queries.MINE, "pending"), sort=choice("sort", ("uncertain", "newest", "oldest"), "uncertain"))
        limit = int(number("limit") or settings.page_size)
        offset = int(number("offset") or 0)
        if not 1 <= limit <= 200 or offset < 0:
            raise InputError("limit must be 1-200 and offset 0 or more")
        return f, limit, offset

    def _queue(who: Principal, f: queries.QueueFilter, limit: int, offset: int, *,
               options: bool = True) -> dict[str, Any]:
        with db.session() as s:
            if db.dialect == "postgresql":  # count, page and progress from one snapshot
                s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            ids, total = queries.queue_ids(s, f, who.reviewer_id, required=settings.required, limit=limit, offset=offset)
            items = queries.load_items(s, ids, who.reviewer_id, with_others=who.is_admin)
            return {"items": items, "total": total, "offset": offset, "limit": limit,
                    "progress": queries.progress(s, who.reviewer_id, required=settings.required),
                    "options": queries.filter_options(s) if options else {}}

    @app.get("/", response_class=HTMLResponse)
    def queue_page(request: Request, who: PageUser) -> Response:
        error = None
        try:
            f, limit, offset = _filter(request.query_params)
        except InputError as exc:
            error, (f, limit, offset) = str(exc), (queries.QueueFilter(), settings.page_size, 0)
        data = _queue(who, f, limit, offset)
        params = f.as_params()
        next_url = "/?" + urlencode({**params, "offset": offset + limit}) if offset + limit < data["total"] else None
        prev_url = "/?" + urlencode({**params, "offset": max(0, offset - limit)}) if offset > 0 else None
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return templates.TemplateResponse(request, "queue.html", {
            **data, "who": who, "filter": f, "params": params, "tags": tags, "error": error,
            "next_url": next_url, "prev_url": prev_url, "here": here, "score_key": params.get("score", "")},
            status_code=422 if error else 200)

    @app.get("/stats", response_class=HTMLResponse)
    def stats_page(request: Request, who: PageUser) -> Response:
        with db.session() as s:
            stats = agreement_summary(s)
            prog = queries.progress(s, who.reviewer_id, required=settings.required)
        return templates.TemplateResponse(request, "stats.html", {"who": who, "stats": stats, "progress": prog})

    # --- form posts (the page works without scripts too) -----------------------------------

    @app.post("/decide")
    async def decide_form(request: Request, who: PageUser) -> Response:
        form = await form_of(request, who)
        try:
            edit_id = int(str(form.get("edit_id")))
            chosen = queries.check_tags(list(form.getlist("tags")), tags)
        except (TypeError, ValueError, InputError) as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        action = str(form.get("decision") or "")
        if action not in queries.ACTIONS:
            return JSONResponse({"detail": "decision must be accept or reject"}, status_code=422)
        note = str(form.get("note") or "").strip()[:2000] or None
        await run_in_threadpool(_record, who, [edit_id], action, chosen, note)
        return RedirectResponse(_safe_next(str(form.get("next") or "/")), status_code=303)

    @app.post("/accept-visible")
    async def accept_visible(request: Request, who: PageUser) -> Response:
        form = await form_of(request, who)
        try:
            ids = sorted({int(str(v)) for v in form.getlist("edit_id")})
        except ValueError:
            return JSONResponse({"detail": "edit_id must be whole numbers"}, status_code=422)

        def undecided() -> list[int]:
            with db.session() as s:
                done = {e for e, r, _, _ in queries.current_decisions(s, ids) if r == who.reviewer_id}
            return [i for i in ids if i not in done]

        todo = await run_in_threadpool(undecided)
        if todo:
            await run_in_threadpool(_record, who, todo, "accept", [], None)
        return RedirectResponse(_safe_next(str(form.get("next") or "/")), status_code=303)

    @app.post("/undo")
    async def undo_form(request: Request, who: PageUser) -> Response:
        form = await form_of(request, who)
        await run_in_threadpool(_undo, who)
        return RedirectResponse(_safe_next(str(form.get("next") or "/")), status_code=303)

    def _record(who: Principal, edit_ids: list[int], action: str, chosen: list[str], note: str | None) -> dict[str, Any]:
        with db.session() as s:
            try:
                rows = queries.record(s, who.reviewer_id, edit_ids, action, tags=chosen, note=note)
            except queries.UnknownEdit as exc:
                raise _UnknownEditError(int(exc.args[0])) from None
            prog = queries.progress(s, who.reviewer_id, required=settings.required)
            return {"edit_id": rows[0].edit_id, "decision": rows[0].decision, "tags": rows[0].tags,
                    "note": rows[0].note, "review_id": rows[0].id, "progress": prog}

    def _undo(who: Principal) -> dict[str, Any]:
        with db.session() as s:
            rows = queries.undo(s, who.reviewer_id)
            undone = [{"edit_id": r.edit_id, "decision": r.decision if r.decision in queries.DECIDED else None,
                       "tags": list(r.tags or []), "note": r.note, "review_id": r.id} for r in rows]
            return {"undone": undone, "progress": queries.progress(s, who.reviewer_id, required=settings.required)}

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> Response:
        return JSONResponse({"detail": str(exc), "code": exc.code}, status_code=422)

    @app.exception_handler(_UnknownEditError)
    async def _unknown_edit(request: Request, exc: _UnknownEditError) -> Response:
        return JSONResponse({"detail": f"no edit {exc.edit_id}"}, status_code=404)

    # --- JSON API ------------------------------------------------------------------------

    @app.get("/api/items")
    def api_items(request: Request, who: ApiUser) -> dict[str, Any]:
        f, limit, offset = _filter(request.query_params)
        data = _queue(who, f, limit, offset, options=False)
        return {"items": [i.as_dict() for i in data["items"]], "total": data["total"], "offset": offset,
                "limit": limit, "progress": data["progress"], "filter": f.as_params()}

    @app.get("/api/items/{edit_id:int}")
    def api_item(edit_id: int, who: ApiUser) -> dict[str, Any]:
        with db.session() as s:
            items = queries.load_items(s, [edit_id], who.reviewer_id, with_others=who.is_admin)
        if not items:
            raise _UnknownEditError(edit_id)
        return items[0].as_dict()

    @app.post("/api/items/{edit_id:int}/decision")
    async def api_decide(edit_id: int, request: Request, who: ApiUser) -> Response:
        check_api_csrf(request, who)
        try:
            body = DecisionRequest.model_validate_json(await request.body())
            chosen = queries.check_tags(body.tags, tags)
        except ValidationError as exc:
            return JSONResponse({"detail": json.loads(exc.json(include_url=False, include_context=False))},
                                status_code=422)
        result = await run_in_threadpool(_record, who, [edit_id], body.decision, chosen, body.note)
        return JSONResponse(result)

    @app.post("/api/undo")
    async def api_undo(request: Request, who: ApiUser) -> Response:
        check_api_csrf(request, who)
        return JSONResponse(await run_in_threadpool(_undo, who))

    @app.get("/api/stats")
    def api_stats(who: ApiUser) -> dict[str, Any]:
        with db.session() as s:
            return {**agreement_summary(s), "progress": queries.progress(s, who.reviewer_id, required=settings.required)}

    # --- images, by edit id and slot only --------------------------------------------------

    def _image(edit_id: int, which: str, index: int = 0) -> Response:
        with db.session() as s:
            found = queries.image_uri(s, edit_id, which, index)
        if found is None:
            return JSONResponse({"detail": f"no {which} image for edit {edit_id}"}, status_code=404)
        uri, fmt = found
        try:
            data = storage.get(uri)
        except FileNotFoundError:
            return JSONResponse({"detail": f"the {which} image of edit {edit_id} is missing from storage"},
                                status_code=404)
        return Response(data, media_type=IMAGE_TYPES.get(fmt.lower(), "application/octet-stream"),
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/images/{edit_id:int}/input")
    def image_input(edit_id: int, who: ApiUser) -> Response:
        return _image(edit_id, "input")

    @app.get("/images/{edit_id:int}/edited")
    def image_edited(edit_id: int, who: ApiUser) -> Response:
        return _image(edit_id, "edited")

    @app.get("/images/{edit_id:int}/garment/{index:int}")
    def image_garment(edit_id: int, index: int, who: ApiUser) -> Response:
        return _image(edit_id, "garment", index)

    return app


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(db: Database, storage: Storage, settings: ReviewSettings, *, host: str, port: int) -> None:
    """Run the review app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(db, storage, settings)
    log.info("review page on http://%s:%d/", host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=False)
