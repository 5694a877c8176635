"""The JSON API for scripts: the queue, one item, a decision, undo and the agreement stats.
A script token (``Authorization: Bearer …``) or a session cookie with ``X-CSRF-Token``."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from common.domain import overrule
from common.domain import review_queue as queries
from common.domain.agreement import agreement_summary
from common.review import worklist
from common.review.deps import ApiUser, Ctx, UnknownEditError, check_api_csrf

router = APIRouter(prefix="/api")


def _no_nul(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError("a note has no NUL characters")
    return value


#: a reviewer's note in a JSON body: at most 2,000 characters, no NUL (the database refuses it)
Note = Annotated[str | None, Field(max_length=2000), AfterValidator(_no_nul)]


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["accept", "reject"]
    tags: list[str] = Field(default_factory=list, max_length=9)
    note: Note = None


Body = TypeVar("Body", bound=BaseModel)


def _invalid(exc: ValidationError) -> Response:
    return JSONResponse({"detail": json.loads(exc.json(include_url=False, include_context=False))}, status_code=422)


async def read_body(request: Request, model: type[Body]) -> Body | Response:
    """The request's JSON body as ``model``, or the 422 answer saying why it is not one (not UTF-8,
    not JSON, or not what ``model`` allows)."""
    try:
        text = (await request.body()).decode("utf-8")
    except UnicodeDecodeError:
        return JSONResponse({"detail": [{"type": "json_invalid", "loc": [],
                                         "msg": "Invalid JSON: the body is not UTF-8"}]}, status_code=422)
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        return _invalid(exc)


@router.get("/items", openapi_extra={"parameters": worklist.FILTER_PARAMETERS})
def api_items(request: Request, who: ApiUser, ctx: Ctx) -> dict[str, Any]:
    f, limit, offset = worklist.parse_filter(request.query_params, ctx.settings.page_size)
    data = worklist.queue_page(ctx, who, f, limit, offset, options=False)
    return {"items": [_with_set(i.as_dict(), data["sets"]) for i in data["items"]], "total": data["total"],
            "total_is_estimate": data["total_is_estimate"], "offset": offset,
            "limit": limit, "progress": data["progress"], "filter": f.as_params()}


@router.get("/items/{edit_id:int}")
def api_item(edit_id: int, who: ApiUser, ctx: Ctx) -> dict[str, Any]:
    with ctx.db.session() as s:
        items = queries.load_items(s, [edit_id], who.reviewer_id, with_others=who.is_admin)
        sets = overrule.badges(s, [edit_id])
    if not items:
        raise UnknownEditError(edit_id)
    return _with_set(items[0].as_dict(), sets)


def _with_set(item: dict[str, Any], sets: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """An item, with its best-of-N set (``/api/sets/ID``) where it is a candidate of one."""
    found = sets.get(item["edit_id"])
    return item if found is None else {**item, "set": {**found, "url": f"/api/sets/{found['analysis_id']}"}}


@router.post("/items/{edit_id:int}/decision", openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": DecisionRequest.model_json_schema()}}}})
async def api_decide(edit_id: int, request: Request, who: ApiUser, ctx: Ctx) -> Response:
    check_api_csrf(request, who)
    body = await read_body(request, DecisionRequest)
    if isinstance(body, Response):
        return body
    chosen = queries.check_tags(body.tags, ctx.tags)
    result = await run_in_threadpool(worklist.record, ctx, who, [edit_id], body.decision, chosen, body.note)
    return JSONResponse(result)


@router.post("/undo")
async def api_undo(request: Request, who: ApiUser, ctx: Ctx) -> Response:
    check_api_csrf(request, who)
    return JSONResponse(await run_in_threadpool(worklist.undo, ctx, who))


@router.get("/stats")
def api_stats(who: ApiUser, ctx: Ctx) -> dict[str, Any]:
    with ctx.db.session() as s:
        return {**agreement_summary(s), "progress": queries.progress(s, who.reviewer_id, required=ctx.settings.required)}
