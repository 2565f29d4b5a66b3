"""Who may call the server: the Host names it answers to, and an optional API key.

A server bound to loopback answers whatever Host it is sent; one bound beyond it answers only
the names it was told (`--allowed-hosts`), so a request for another site that reaches it
(a DNS name pointed at it, a rebinding attack) is refused. An API key, when set, is needed by
every /v1 route; the page, its files, /healthz and the OpenAPI pages stay open.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Annotated

from fastapi import HTTPException, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

API_KEY_ENV = "PNEUMOSCAN_API_KEY"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("", "0.0.0.0", "::")
_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="APIKeyHeader")
_BEARER = HTTPBearer(auto_error=False, scheme_name="Bearer")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(bind: str, given: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """The Host names a server bound to `bind` answers: `given` (lower case; '*' for any), else
    None (no check) on loopback, else the bound address and the loopback names. A wildcard
    bind (0.0.0.0, ::) needs them given: the names clients use are not known here."""
    if given:
        return None if "*" in given else tuple(h.lower() for h in given)
    if _is_loopback(bind):
        return None
    if bind in WILDCARDS:
        raise ValueError(f"--host {bind or '(all)'} answers on every address: give the names "
                         f"clients reach it by with --allowed-hosts NAME[,NAME...] "
                         f"(or '*' to answer any Host header)")
    return (bind.lower(), *LOOPBACK_NAMES)


def _host_of(header: str) -> str:
    """'name:8000' -> 'name', '[::1]:8000' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else ""
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    """400 with the API's error body for a Host header not in `allowed` (exact names, or
    '*.example.org' for its subdomains)."""

    def __init__(self, app, allowed: tuple[str, ...]):
        self.app, self.allowed = app, allowed

    def _ok(self, host: str) -> bool:
        return any(host == a or (a.startswith("*.") and host.endswith(a[1:]))
                   for a in self.allowed)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if self._ok(_host_of(header)):
            return await self.app(scope, receive, send)
        body = json.dumps({"detail": f"Host {header[:100]!r} is not one this server answers "
                                     f"to (--allowed-hosts)"}).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def api_key_dependency(expected: str):
    """A FastAPI dependency: 401 unless the request carries `expected` as X-API-Key or as
    `Authorization: Bearer <key>` (compared in constant time). Declared in the OpenAPI schema
    as two alternative security schemes."""
    want = expected.encode()

    async def require_key(key: Annotated[str | None, Security(_HEADER)],
                          token: Annotated[HTTPAuthorizationCredentials | None,
                                           Security(_BEARER)]):
        given = key if key is not None else token.credentials if token else None
        if given is None or not hmac.compare_digest(given.encode(), want):
            raise HTTPException(401, "this server needs an API key: send it as the X-API-Key "
                                     "header or as 'Authorization: Bearer <key>'"
                                if given is None else "wrong API key",
                                headers={"WWW-Authenticate": "Bearer"})

    return require_key
