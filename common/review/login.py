"""Logging in and out: the login page, its form (CSRF by a cookie of its own) and the session
cookie it sets."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from common.review import auth
from common.review.deps import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    Ctx,
    PageUser,
    ReviewContext,
    form_of,
    safe_next,
)

router = APIRouter()


def _login_page(ctx: ReviewContext, request: Request, error: str | None = None, status: int = 200,
                headers: dict[str, str] | None = None) -> Response:
    token = auth.new_secret()
    response = ctx.templates.TemplateResponse(request, "login.html", {
        "csrf": token, "error": error, "next": safe_next(request.query_params.get("next"))},
        status_code=status, headers=headers)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", path="/login",
                        secure=request.url.scheme == "https")
    return response


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, ctx: Ctx) -> Response:
    return _login_page(ctx, request)


@router.post("/login")
async def login(request: Request, ctx: Ctx) -> Response:
    form = await form_of(request, None)
    name, password = str(form.get("username") or ""), str(form.get("password") or "")
    if "\x00" in name:  # no name holds one, and PostgreSQL text cannot
        return _login_page(ctx, request, "A username has no NUL characters.", 422)
    address = request.client.host if request.client else "unknown"
    settings = ctx.settings

    def check() -> tuple[str | None, float]:
        with ctx.db.session() as s:
            result = auth.attempt_login(s, name, password, address, settings)
            if not result.ok:
                return None, result.retry_after_s
            assert result.reviewer is not None
            cookie, _ = auth.open_session(s, result.reviewer, settings)
            return cookie, 0.0

    cookie, wait = await run_in_threadpool(check)
    if wait > 0:
        return _login_page(ctx, request, f"Too many failed logins: try again in {auth.retry_after_header(wait)} s.",
                           429, {"Retry-After": auth.retry_after_header(wait)})
    if cookie is None:
        return _login_page(ctx, request, auth.LOGIN_REFUSED, 401)
    response = RedirectResponse(safe_next(str(form.get("next") or "/")), status_code=303)
    response.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="lax", path="/",
                        max_age=int(settings.session_ttl_s), secure=request.url.scheme == "https")
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
async def logout(request: Request, who: PageUser, ctx: Ctx) -> Response:
    await form_of(request, who)
    cookie = request.cookies.get(SESSION_COOKIE, "")

    def close() -> None:
        with ctx.db.session() as s:
            auth.close_session(s, cookie)

    await run_in_threadpool(close)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
