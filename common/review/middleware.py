"""What wraps every request of the review app: security headers (CSP and friends) on every
answer, and a cap on request bodies, enforced before a body is read."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


async def security_headers(request: Request, call_next: Any) -> Response:
    """The security headers on every answer; nothing but static files is cached."""
    response: Response = await call_next(request)
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    if not request.url.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


class BodyTooLarge(Exception):
    """A request body over the limit, found while it streamed in."""


class BodySizeLimit:
    """Refuse a request body over ``max_bytes`` with 413: at once when its Content-Length says
    so, else as soon as the bytes received pass the limit (chunked bodies have no length)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send, 400 if not declared.isdigit() else 413)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge()
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if started:  # the answer is on its way: nothing better to do than cut it
                raise
            await self._refuse(scope, receive, send, 413)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int) -> None:
        detail = (f"request body over {self.max_bytes} bytes (review.max_body_bytes)" if status == 413
                  else "Content-Length must be a whole number")
        await JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})(
            scope, receive, send)
