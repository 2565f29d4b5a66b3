"""The one error body every error status of the API returns, `{"detail": "<message>"}`, and
the OpenAPI entries that say so, so that a client generated from /openapi.json parses it.

FastAPI's own request-validation errors (a query parameter such as `explain=maybe`) would
otherwise come as a list of objects under `detail`, a second shape for the same 422.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect


class ErrorBody(BaseModel):
    """What every error status carries."""

    detail: str = Field(description="what was wrong, naming the file where there is one",
                        examples=["scan.jpeg: cannot decode image (image file is truncated)"])


WHY = {
    400: "malformed multipart body, or a Host header this server does not answer to",
    401: "this server needs an API key (header X-API-Key or Authorization: Bearer), and none "
         "or a wrong one was sent",
    408: "the request head or body did not arrive in time (see docs/serve.md)",
    413: "the body is larger than the server's upload limit",
    415: "not multipart/form-data, or the file is not a JPEG, PNG or DICOM file",
    422: "no file, an empty, truncated, undecodable or oversized image, or a bad query "
         "parameter",
    503: "the model is not loaded yet",
}


def responses(*statuses: int) -> dict:
    """OpenAPI `responses` for these error statuses, each with the ErrorBody model."""
    return {s: {"model": ErrorBody, "description": WHY[s]} for s in statuses}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        where = " ".join(str(x) for x in e.get("loc", ()))
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    """Error handlers: validation errors as ErrorBody; a client that disconnected while its
    body was being read ends the request quietly (the access log says `disconnected`)
    instead of a 500 with a traceback."""

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _validation_message(exc)}, 422)

    @app.exception_handler(ClientDisconnect)
    async def client_disconnected(request: Request, exc: ClientDisconnect):
        return Response(status_code=400)  # nobody is there to read it
