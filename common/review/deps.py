"""What every route of the review app depends on: the app's context, the current reviewer
(a session cookie or a script token), the CSRF checks and the errors the app turns into answers.

Pages need a login (else a redirect to /login); the API takes the same session cookie or a
script token (``Authorization: Bearer …``), else 401. Every form POST carries the form's
CSRF token (a session's own, or before login a cookie's), and so does every API POST made with
a cookie (``X-CSRF-Token``); token requests need none (no browser sends a token by itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates

from common.core.errors import InputError
from common.core.settings import ReviewSettings
from common.review import auth
from common.store.db import Database
from common.store.storage import Storage

SESSION_COOKIE = "synthpipe_review"
LOGIN_CSRF_COOKIE = "synthpipe_login_csrf"


class NotLoggedIn(Exception):
    def __init__(self, api: bool, path: str) -> None:
        self.api, self.path = api, path


class Forbidden(Exception):
    """A POST without its CSRF token."""


class UnknownEditError(Exception):
    def __init__(self, edit_id: int) -> None:
        self.edit_id = edit_id


@dataclass(frozen=True)
class ReviewContext:
    """What the routes share, built once by ``create_app`` and kept on ``app.state.review``."""

    db: Database
    storage: Storage
    settings: ReviewSettings
    templates: Jinja2Templates

    @property
    def tags(self) -> list[str]:
        return list(self.settings.tags)


@dataclass(frozen=True)
class Principal:
    reviewer_id: int
    name: str
    is_admin: bool
    csrf: str | None  # None: authenticated by token
    via: Literal["session", "token"]


def context(request: Request) -> ReviewContext:
    ctx: ReviewContext = request.app.state.review
    return ctx


def safe_next(value: str | None) -> str:
    """Only a path on this site: no scheme, no host, no ``//`` (an open redirect otherwise)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _principal(request: Request, api: bool) -> Principal:
    db = context(request).db
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


Ctx = Annotated[ReviewContext, Depends(context)]
PageUser = Annotated[Principal, Depends(page_user)]
ApiUser = Annotated[Principal, Depends(api_user)]


def check_api_csrf(request: Request, who: Principal) -> None:
    """An API POST made with a session cookie carries the session's token in ``X-CSRF-Token``."""
    if who.via == "session" and not auth.same_secret(request.headers.get("x-csrf-token"), who.csrf):
        raise Forbidden()


async def form_of(request: Request, who: Principal | None) -> Any:
    """The posted form, once its ``csrf_token`` is the session's (or, before login, the cookie's)
    and it is UTF-8 (a form that is not would be read as something else than was meant)."""
    raw = await request.body()  # kept by the request: the form is parsed from these bytes
    form = await request.form()
    expected = who.csrf if who else request.cookies.get(LOGIN_CSRF_COOKIE)
    if not auth.same_secret(str(form.get("csrf_token") or ""), expected):
        raise Forbidden()
    if not _is_utf8(raw, request.headers.get("content-type", "")):
        raise InputError("the form is not UTF-8: post it from the review page, or encode it as UTF-8")
    return form


def _is_utf8(raw: bytes, content_type: str) -> bool:
    """The body is UTF-8; a URL-encoded form is ASCII with UTF-8 %-escapes, as browsers send it
    (other bytes would be read as Latin-1)."""
    try:
        if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
            parse_qsl(raw.decode("ascii"), keep_blank_values=True, errors="strict")
        else:
            raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
