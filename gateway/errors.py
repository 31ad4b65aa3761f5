"""One mapping from errors to HTTP: core errors carry their status; validation errors name the field.

Bodies use OpenAI's error shape so the `openai` client raises its typed exceptions
(BadRequestError, RateLimitError, ...) unchanged.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from services import metrics
from services.errors import EmbedfleetError, InvalidInput, PayloadTooLarge

log = logging.getLogger("embedfleet.gateway")


def error_response(err: EmbedfleetError) -> Response:
    """The one place a refusal becomes a response, so the one place it is counted (by the error's reason)."""
    if err.reason is not None:
        metrics.REJECTED.labels(err.reason).inc()
    headers = {}
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(err.retry_after)))
    if err.status >= 500:
        log.warning("%s: %s", err.code, err.message)
    return Response(
        orjson.dumps(err.to_dict()), status_code=err.status, headers=headers, media_type="application/json"
    )


def _field(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


async def _embedfleet(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, EmbedfleetError)
    return error_response(exc)


async def _validation(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    field = _field(tuple(first.get("loc", ())))
    return error_response(InvalidInput(f"{field}: {first.get('msg')}", field=field))


async def _http(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 413:
        return error_response(PayloadTooLarge(str(exc.detail), field="body"))
    err = EmbedfleetError(str(exc.detail))
    err.status = exc.status_code
    err.code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    err.type = "invalid_request_error"
    return error_response(err)


async def _unhandled(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return error_response(EmbedfleetError("internal error"))


def install(app: FastAPI) -> None:
    app.add_exception_handler(EmbedfleetError, _embedfleet)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unhandled)
