"""The pages for people: the queue, the agreement stats, and the form posts that make the page
work without scripts (decide, accept all visible, undo)."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from common.core.errors import InputError
from common.domain import review_queue as queries
from common.domain.agreement import agreement_summary
from common.review import worklist
from common.review.deps import Ctx, PageUser, form_of, safe_next

router = APIRouter()


@router.get("/", response_class=HTMLResponse, openapi_extra={"parameters": worklist.FILTER_PARAMETERS})
def queue_page(request: Request, who: PageUser, ctx: Ctx) -> Response:
    error = None
    try:
        f, limit, offset = worklist.parse_filter(request.query_params, ctx.settings.page_size)
    except InputError as exc:
        error, (f, limit, offset) = str(exc), (queries.QueueFilter(), ctx.settings.page_size, 0)
    data = worklist.queue_page(ctx, who, f, limit, offset)
    params = f.as_params()
    next_url = "/?" + urlencode({**params, "offset": offset + limit}) if offset + limit < data["total"] else None
    prev_url = "/?" + urlencode({**params, "offset": max(0, offset - limit)}) if offset > 0 else None
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return ctx.templates.TemplateResponse(request, "queue.html", {
        **data, "who": who, "filter": f, "params": params, "tags": ctx.tags, "error": error,
        "next_url": next_url, "prev_url": prev_url, "here": here, "score_key": params.get("score", "")},
        status_code=422 if error else 200)


@router.get("/stats", response_class=HTMLResponse)
def stats_page(request: Request, who: PageUser, ctx: Ctx) -> Response:
    with ctx.db.session() as s:
        stats = agreement_summary(s)
        prog = queries.progress(s, who.reviewer_id, required=ctx.settings.required)
    return ctx.templates.TemplateResponse(request, "stats.html", {"who": who, "stats": stats, "progress": prog})


@router.post("/decide")
async def decide_form(request: Request, who: PageUser, ctx: Ctx) -> Response:
    form = await form_of(request, who)
    try:
        edit_id = int(str(form.get("edit_id")))
        chosen = queries.check_tags(list(form.getlist("tags")), ctx.tags)
        note = worklist.check_text("note", str(form.get("note") or "").strip()[:2000] or None)
    except (TypeError, ValueError, InputError) as exc:
        return JSONResponse({"detail": str(exc)}, status_code=422)
    action = str(form.get("decision") or "")
    if action not in queries.ACTIONS:
        return JSONResponse({"detail": "decision must be accept or reject"}, status_code=422)
    await run_in_threadpool(worklist.record, ctx, who, [edit_id], action, chosen, note)
    return RedirectResponse(safe_next(str(form.get("next") or "/")), status_code=303)


@router.post("/accept-visible")
async def accept_visible(request: Request, who: PageUser, ctx: Ctx) -> Response:
    form = await form_of(request, who)
    try:
        ids = sorted({int(str(v)) for v in form.getlist("edit_id")})
    except ValueError:
        return JSONResponse({"detail": "edit_id must be whole numbers"}, status_code=422)

    def undecided() -> list[int]:
        with ctx.db.session() as s:
            done = {e for e, r, _, _ in queries.current_decisions(s, ids) if r == who.reviewer_id}
        return [i for i in ids if i not in done]

    todo = await run_in_threadpool(undecided)
    if todo:
        await run_in_threadpool(worklist.record, ctx, who, todo, "accept", [], None)
    return RedirectResponse(safe_next(str(form.get("next") or "/")), status_code=303)


@router.post("/undo")
async def undo_form(request: Request, who: PageUser, ctx: Ctx) -> Response:
    form = await form_of(request, who)
    await run_in_threadpool(worklist.undo, ctx, who)
    return RedirectResponse(safe_next(str(form.get("next") or "/")), status_code=303)
