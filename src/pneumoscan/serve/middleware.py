"""Two small ASGI middlewares: an upload size limit enforced while the body streams in, and
an access log that holds request id, size, status and timing only (never names or pixels)."""

from __future__ import annotations

import json
import logging
import time
import uuid

from starlette.exceptions import HTTPException

log = logging.getLogger("pneumoscan.serve")
# Set in a request's scope by server.TimedH11Protocol when its body did not arrive in time.
TIMEOUT_KEY = "pneumoscan.body_timeout"


def too_large_message(limit: int) -> str:
    return f"upload larger than the {limit / 2**20:g} MB this server accepts"


class BodyLimit:
    """413 for a body over `limit` bytes: at once when Content-Length declares it, otherwise
    as soon as the streamed (e.g. chunked) bytes pass the limit, before the rest is read."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            body = json.dumps({"detail": too_large_message(self.limit)}).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()),
                                    (b"connection", b"close")]})
            return await send({"type": "http.response.body", "body": body})
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                # An HTTPException reaches FastAPI's handler as a plain 413 response.
                raise HTTPException(413, too_large_message(self.limit))
            return message

        await self.app(scope, counted, send)


class PagesStayLocal:
    """A Content-Security-Policy on the API pages (/docs, /redoc) that lets them load nothing
    from outside this server: their Swagger UI and ReDoc come from the fastapi-offline
    package, and ReDoc's one outside request (its maker's logo, from a CDN) is blocked."""

    POLICY = (b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
              b"'unsafe-inline'; img-src 'self' data: blob:; worker-src 'self' blob:; "
              b"connect-src 'self'; font-src 'self' data:")

    def __init__(self, app, paths: tuple[str, ...]):
        self.app, self.paths = app, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)

        async def with_policy(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (b"content-security-policy", self.POLICY)]
            await send(message)

        await self.app(scope, receive, with_policy)


class AccessLog:
    """One log line per request: id, method, route path, body bytes, status, milliseconds.
    The status is `disconnected` when the client went away before the answer was sent, and
    408 when the server cut off a body that did not arrive in time (server.py). The id is also
    returned as the X-Request-ID header."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid, start, size, status = uuid.uuid4().hex[:12], time.perf_counter(), 0, None
        gone = False  # the client disconnected before an answer was started

        async def counted():
            nonlocal size, gone
            message = await receive()
            size += len(message.get("body", b""))
            gone = gone or (message["type"] == "http.disconnect" and status is None)
            return message

        async def tagged(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, counted, tagged)
        finally:
            shown = (408 if TIMEOUT_KEY in scope else "disconnected" if gone else status or 500)
            log.info("request %s %s %s bytes=%d status=%s ms=%.1f", rid, scope["method"],
                     scope["path"], size, shown, (time.perf_counter() - start) * 1000)
