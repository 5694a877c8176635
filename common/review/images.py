"""An edit's images, named by edit id and slot only: a request never names a path or URI."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from common.domain import review_queue as queries
from common.review.deps import ApiUser, Ctx, ReviewContext

router = APIRouter(prefix="/images")

IMAGE_TYPES = {"jpeg": "image/jpeg", "jpg": "image/jpeg", "png": "image/png", "webp": "image/webp",
               "gif": "image/gif", "bmp": "image/bmp", "tiff": "image/tiff", "tif": "image/tiff"}


def _image(ctx: ReviewContext, edit_id: int, which: str, index: int = 0) -> Response:
    with ctx.db.session() as s:
        found = queries.image_uri(s, edit_id, which, index)
    if found is None:
        return JSONResponse({"detail": f"no {which} image for edit {edit_id}"}, status_code=404)
    uri, fmt = found
    try:
        data = ctx.storage.get(uri)
    except FileNotFoundError:
        return JSONResponse({"detail": f"the {which} image of edit {edit_id} is missing from storage"},
                            status_code=404)
    return Response(data, media_type=IMAGE_TYPES.get(fmt.lower(), "application/octet-stream"),
                    headers={"Cache-Control": "private, max-age=3600"})


@router.get("/{edit_id:int}/input")
def image_input(edit_id: int, who: ApiUser, ctx: Ctx) -> Response:
    return _image(ctx, edit_id, "input")


@router.get("/{edit_id:int}/edited")
def image_edited(edit_id: int, who: ApiUser, ctx: Ctx) -> Response:
    return _image(ctx, edit_id, "edited")


@router.get("/{edit_id:int}/garment/{index:int}")
def image_garment(edit_id: int, index: int, who: ApiUser, ctx: Ctx) -> Response:
    return _image(ctx, edit_id, "garment", index)
