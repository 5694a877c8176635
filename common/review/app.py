"""The review web app: pages for people, a JSON API for scripts, images by edit id only.

``create_app`` builds it from its routers (``login``, ``pages``, ``api``, ``images``, ``sets``), the
middleware (security headers, the request-body cap) and the handlers that turn the app's errors
into answers; who may call what is in ``deps``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from common.core.errors import InputError
from common.core.settings import ReviewSettings
from common.domain.overrule import UnknownSet
from common.review import api, images, login, pages, sets
from common.review.deps import Forbidden, NotLoggedIn, ReviewContext, UnknownEditError
from common.review.middleware import BodySizeLimit, security_headers
from common.store.db import Database
from common.store.storage import Storage

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["label"] = lambda code: str(code).replace("_", " ")
    templates.env.filters["pretty"] = lambda obj: json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False)
    return templates


async def _not_logged_in(request: Request, exc: NotLoggedIn) -> Response:
    if exc.api:
        return JSONResponse({"detail": "not logged in: log in, or send Authorization: Bearer TOKEN"},
                            status_code=401, headers={"WWW-Authenticate": "Bearer"})
    return RedirectResponse("/login?" + urlencode({"next": exc.path}), status_code=303)


async def _forbidden(request: Request, exc: Forbidden) -> Response:
    return JSONResponse({"detail": "missing or wrong CSRF token: reload the page"}, status_code=403)


async def _input_error(request: Request, exc: InputError) -> Response:
    return JSONResponse({"detail": str(exc), "code": exc.code}, status_code=422)


async def _unknown_edit(request: Request, exc: UnknownEditError) -> Response:
    return JSONResponse({"detail": f"no edit {exc.edit_id}"}, status_code=404)


async def _unknown_set(request: Request, exc: UnknownSet) -> Response:
    return JSONResponse({"detail": f"analysis {exc.args[0]} has no selection of candidates (best-of-N): "
                         "nothing to show or overrule"}, status_code=404)


def create_app(db: Database, storage: Storage, settings: ReviewSettings) -> FastAPI:
    """The review app over ``db`` and ``storage``; its OpenAPI schema is not served."""
    app = FastAPI(title="synthpipe review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.review = ReviewContext(db=db, storage=storage, settings=settings, templates=_templates())
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    # the last added runs first: the security headers go on every answer, the 413 included
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.middleware("http")(security_headers)
    app.exception_handler(NotLoggedIn)(_not_logged_in)
    app.exception_handler(Forbidden)(_forbidden)
    app.exception_handler(InputError)(_input_error)
    app.exception_handler(UnknownEditError)(_unknown_edit)
    app.exception_handler(UnknownSet)(_unknown_set)
    for router in (login.router, pages.router, api.router, images.router, sets.router):
        # the routes themselves, not an include: newer FastAPI lists an included router as one
        # opaque entry, and ``app.routes`` should name every route (the tests walk them all)
        app.router.routes.extend(router.routes)
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
