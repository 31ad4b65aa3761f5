"""Pure-ASGI middleware (no BaseHTTPMiddleware: it costs ~0.2 ms and a task per request).

- Request-size limit: 413 from Content-Length before reading, or while streaming a chunked body (raised
  as an HTTPException that gateway.errors maps to the same 413 body).
- Overload: 429 for an embedding request while every model's queue is full, before the body is read.
- Metrics: requests and latency by route template, model and status.
"""

from __future__ import annotations

import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import error_response
from services import metrics
from services.errors import EmbedfleetError, Overloaded, PayloadTooLarge

EMBED_PATHS = frozenset({"/v1/embeddings", "/v1/embed"})


class BodyTooLarge(HTTPException):
    """An HTTPException so FastAPI's body parsing re-raises it instead of turning it into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, max_request_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}
        refusal = self._refuse_early(scope)
        if refusal is not None:
            await error_response(refusal)(scope, receive, send)
            self._observe(scope, refusal.status, started)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, limited_receive, tracking_send)
        self._observe(scope, status["code"], started)

    def _refuse_early(self, scope: Scope) -> EmbedfleetError | None:
        """Refusals that need no body: too large by Content-Length (413), and an embedding request while
        every served model's queue is full (429, answered before the body is read or validated: under
        overload a refusal must cost next to nothing)."""
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return PayloadTooLarge(f"request body over {self.max_bytes} bytes", field="body")
        if scope.get("method") == "POST" and scope.get("path") in EMBED_PATHS:
            runtime = getattr(scope["app"].state, "runtime", None)
            if runtime is not None and runtime.embedder.saturated():
                return Overloaded("every model's queue is full", retry_after=runtime.settings.retry_after_s)
        return None

    @staticmethod
    def _observe(scope: Scope, status: int, started: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        model = scope.get("state", {}).get("model", "")
        metrics.REQUESTS.labels(path, model, str(status)).inc()
        metrics.REQUEST_LATENCY.labels(path, model).observe(time.perf_counter() - started)
