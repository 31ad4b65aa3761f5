"""The error hierarchy: every status the fleet returns is chosen here, in one place.

Core code raises these; the gateway maps them to HTTP with one handler (OpenAI-shaped bodies), and
workers log them. Each carries the HTTP status, a stable machine code, the offending field and, for
overload, how long to wait.
"""

from __future__ import annotations


class EmbedfleetError(Exception):
    status: int = 500
    code: str = "internal_error"
    type: str = "server_error"
    reason: str | None = None  # the `embedfleet_rejected_requests_total` label when refused before any work

    def __init__(self, message: str, *, field: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, object]:
        """OpenAI's error shape: {"error": {message, type, param, code}}."""
        return {"error": {"message": self.message, "type": self.type, "param": self.field, "code": self.code}}


class InvalidInput(EmbedfleetError):
    status = 400
    code = "invalid_input"
    type = "invalid_request_error"
    reason = "invalid"


class Unauthorized(EmbedfleetError):
    status = 401
    code = "invalid_api_key"
    type = "authentication_error"
    reason = "auth"


class Forbidden(EmbedfleetError):
    status = 403
    code = "forbidden"
    type = "permission_error"
    reason = "auth"


class NotFound(EmbedfleetError):
    status = 404
    code = "not_found"
    type = "invalid_request_error"


class StaleTarget(NotFound):
    """A physical collection named by a plan is no longer part of its collection (dropped after a
    cutover, a rollback or a cancel): the caller re-reads the plan and retries."""

    code = "stale_target"


class Conflict(EmbedfleetError):
    status = 409
    code = "conflict"
    type = "invalid_request_error"


class PayloadTooLarge(EmbedfleetError):
    status = 413
    code = "payload_too_large"
    type = "invalid_request_error"
    reason = "too_large"


class UnsupportedMedia(EmbedfleetError):
    status = 415
    code = "unsupported_media"
    type = "invalid_request_error"
    reason = "invalid"


class Unprocessable(EmbedfleetError):
    status = 422
    code = "unprocessable_media"
    type = "invalid_request_error"
    reason = "invalid"


class Transient(EmbedfleetError):
    """A failure that retrying later can cure: job runners and migration steps retry these."""


class Overloaded(Transient):
    """Admission refused (queue full, rate limit): the caller should retry after `retry_after`."""

    status = 429
    code = "rate_limit_exceeded"
    type = "rate_limit_error"
    reason = "queue_full"


class RateLimited(Overloaded):
    """A key's token bucket is empty: 429 like a full queue, counted apart."""

    reason = "rate_limited"


class EncoderUnavailable(Transient):
    """Triton unreachable or the model not ready: transient, retry later."""

    status = 503
    code = "encoder_unavailable"
    type = "server_error"
    reason = "unavailable"


class Inconsistent(EmbedfleetError):
    """The server contradicted itself (e.g. a query vector it made does not fit the collection it chose):
    an internal error, never the caller's fault."""


class ConfigError(Exception):
    """Bad registry or settings: fail fast at start-up, never at request time."""
