"""Running the app under uvicorn: deadlines for slow clients, and a log that holds only the
lines docs/serve.md lists.

uvicorn closes an idle keep-alive connection after `timeout_keep_alive` seconds, but it waits
forever for the rest of a request head that has begun to arrive, and for a request body that
trickles in a byte at a time (h11 has no clock). TimedH11Protocol adds both deadlines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import warnings
from dataclasses import asdict
from functools import partial
from pathlib import Path

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .app import Settings, create_app
from .middleware import TIMEOUT_KEY

log = logging.getLogger("pneumoscan.serve")
SETTINGS_ENV = "PNEUMOSCAN_SERVE_SETTINGS"  # how `serve --workers N` hands settings to workers
KEEP_ALIVE_S = 5  # uvicorn's default: an idle connection between requests is closed after it


def _timeout_response(what: str, seconds: float) -> bytes:
    body = json.dumps({"detail": f"request {what} not received within {seconds:g} s"}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
            + body)


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with two deadlines: a request head must be complete within
    `header_timeout` seconds of the connection being ready for it (opened, or the previous
    response sent), and its body within `body_timeout` seconds of the head. Past either, the
    client gets 408 (when no response has started) and the connection is closed."""

    def __init__(self, *args, header_timeout: float, body_timeout: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = {"head": header_timeout, "body": body_timeout}
        self._phase: str | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._arm(None)
        super().connection_lost(exc)

    def _watch(self) -> None:
        """Start the clock of the part of a request now awaited; keep it running while the
        same part is still awaited."""
        state = self.conn.their_state
        phase = "head" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if phase != self._phase:
            self._arm(phase)

    def _arm(self, phase: str | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._phase, self._deadline = phase, None
        if phase is not None:
            self._deadline = self.loop.call_later(self.limits[phase], self._expired, phase)

    def _expired(self, phase: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        seconds = self.limits[phase]
        if phase == "head" and not self.conn.trailing_data[0]:
            self.transport.close()  # idle, no byte of a request: nothing to answer or log
            return
        cycle = self.cycle if phase == "body" else None
        if cycle is None or not cycle.response_started:
            self.transport.write(_timeout_response(phase, seconds))
        if cycle is not None and not cycle.response_complete:
            cycle.scope[TIMEOUT_KEY] = seconds  # the request's access line says 408
        else:
            log.info("timeout: request %s not received within %g s; connection closed",
                     phase, seconds)
        self.transport.close()


def _module_of(filename: str) -> str:
    """'.../site-packages/PIL/Image.py' -> 'PIL': where a warning came from, without the path."""
    parts = Path(filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return parts[parts.index(marker) + 1].removesuffix(".py")
    return Path(filename).stem


def log_library_warnings() -> None:
    """Python warnings raised while serving become one log line each: the category and the
    package that raised it. Never the message (a pydicom warning can quote a tag of the
    upload) nor a file path; each distinct warning is still logged once per place, as Python
    shows them by default."""
    def show(message, category, filename, lineno, file=None, line=None):
        log.warning("library warning: %s from %s", category.__name__, _module_of(filename))

    warnings.showwarning = show


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log_library_warnings()


def app_from_env():
    """Factory for uvicorn worker processes (`serve --workers N`): settings come as JSON.
    A spawned worker does not inherit the parent's logging set-up, so it makes its own."""
    _setup_logging()
    return create_app(Settings(**json.loads(os.environ.get(SETTINGS_ENV, "{}"))))


def serve(settings: Settings) -> None:
    """Run uvicorn in the foreground (blocks) with the deadlines of TimedH11Protocol."""
    import uvicorn

    _setup_logging()
    common = {"host": settings.host, "port": settings.port, "access_log": False,
              "log_level": "info", "timeout_keep_alive": KEEP_ALIVE_S,
              "http": partial(TimedH11Protocol, header_timeout=settings.header_timeout,
                              body_timeout=settings.body_timeout)}
    if settings.workers > 1:
        # Worker processes rebuild the app themselves, so settings travel by environment.
        os.environ[SETTINGS_ENV] = json.dumps(asdict(settings))
        uvicorn.run("pneumoscan.serve.server:app_from_env", factory=True,
                    workers=settings.workers, **common)
    else:
        uvicorn.run(create_app(settings), **common)
