"""Best-of-N on the review app: an analysis's candidate edits side by side (``/sets/ID``), and a
person's overrule of the selection, as a form (session and CSRF token) and as JSON (a script's
token, or a session with ``X-CSRF-Token``).

- ``GET /sets/{analysis_id}``: the page; ``GET /api/sets/{analysis_id}``: the same as JSON.
- ``POST /sets/{analysis_id}/select`` (form: ``edit_id``, ``note``) and ``POST /api/sets/{analysis_id}/selection``
  (``{"edit_id": …, "note": …}``): make that candidate the selected one.
- ``POST /sets/{analysis_id}/clear`` (form) and ``DELETE /api/sets/{analysis_id}/selection``: back to
  the selection step's pick.

An analysis without a selection is a 404; an edit that is not one of its candidates a 422. Both
changes are idempotent (``changed`` says whether the store changed).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from common.domain import overrule
from common.review import worklist
from common.review.api import Note, read_body
from common.review.deps import (
    ApiUser,
    Ctx,
    PageUser,
    Principal,
    ReviewContext,
    check_api_csrf,
    form_of,
    safe_next,
)

router = APIRouter()


class SelectRequest(BaseModel):
    """A person's pick of an analysis's selected candidate."""

    model_config = ConfigDict(extra="forbid")

    edit_id: int = Field(ge=1, le=overrule.MAX_ID)
    note: Note = None


def _view(ctx: ReviewContext, analysis_id: int) -> overrule.CandidateSet:
    with ctx.db.session() as s:
        return overrule.candidate_set(s, analysis_id)


def _select(ctx: ReviewContext, who: Principal, analysis_id: int, edit_id: int | None,
            note: str | None) -> dict[str, Any]:
    """Overrule (``edit_id``) or clear (None); the set afterwards, and whether anything changed."""
    with ctx.db.session() as s:
        if edit_id is None:
            changed = overrule.clear_overrule(s, analysis_id, who.reviewer_id, note=note)
        else:
            changed = overrule.overrule_selection(s, analysis_id, edit_id, who.reviewer_id, note=note)
        return {"changed": changed, **overrule.candidate_set(s, analysis_id).as_dict()}


@router.get("/sets/{analysis_id:int}", response_class=HTMLResponse)
def set_page(analysis_id: int, request: Request, who: PageUser, ctx: Ctx) -> Response:
    view = _view(ctx, analysis_id)
    return ctx.templates.TemplateResponse(request, "set.html", {
        "who": who, "set": view, "here": request.url.path, "back": safe_next(request.query_params.get("back"))})


async def _form_note(request: Request, who: Principal) -> tuple[Any, str | None]:
    form = await form_of(request, who)
    return form, worklist.check_text("note", str(form.get("note") or "").strip()[:2000] or None)


@router.post("/sets/{analysis_id:int}/select")
async def select_form(analysis_id: int, request: Request, who: PageUser, ctx: Ctx) -> Response:
    form, note = await _form_note(request, who)
    try:
        edit_id = int(str(form.get("edit_id")))
    except ValueError:
        return JSONResponse({"detail": "edit_id must be a whole number"}, status_code=422)
    await run_in_threadpool(_select, ctx, who, analysis_id, edit_id, note)
    return RedirectResponse(f"/sets/{analysis_id}", status_code=303)


@router.post("/sets/{analysis_id:int}/clear")
async def clear_form(analysis_id: int, request: Request, who: PageUser, ctx: Ctx) -> Response:
    _, note = await _form_note(request, who)
    await run_in_threadpool(_select, ctx, who, analysis_id, None, note)
    return RedirectResponse(f"/sets/{analysis_id}", status_code=303)


@router.get("/api/sets/{analysis_id:int}")
def api_set(analysis_id: int, who: ApiUser, ctx: Ctx) -> dict[str, Any]:
    return _view(ctx, analysis_id).as_dict()


@router.post("/api/sets/{analysis_id:int}/selection", openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": SelectRequest.model_json_schema()}}}})
async def api_select(analysis_id: int, request: Request, who: ApiUser, ctx: Ctx) -> Response:
    check_api_csrf(request, who)
    body = await read_body(request, SelectRequest)
    if isinstance(body, Response):
        return body
    return JSONResponse(await run_in_threadpool(_select, ctx, who, analysis_id, body.edit_id, body.note))


@router.delete("/api/sets/{analysis_id:int}/selection")
async def api_clear(analysis_id: int, request: Request, who: ApiUser, ctx: Ctx) -> Response:
    check_api_csrf(request, who)
    return JSONResponse(await run_in_threadpool(_select, ctx, who, analysis_id, None, None))

