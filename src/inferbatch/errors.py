"""The exception hierarchy. Each maps to OpenAI's error envelope and an HTTP status;
the docstring is the default message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class InferbatchError(Exception):
    """Something went wrong."""

    status_code = 500
    type = "server_error"
    code: str | None = None
    should_retry: bool | None = None
    """Sent as ``x-should-retry`` when set: the official SDKs retry 408, 409, 429 and 5xx
    unless told not to, and retrying a state conflict only delays the same answer."""
    retry_after: int | None = None
    """Sent as ``Retry-After`` (seconds) when set."""

    def __init__(
        self, message: str | None = None, *, param: str | None = None, code: str | None = None
    ) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.param = param
        if code is not None:
            self.code = code
        super().__init__(self.message)

    def headers(self) -> dict[str, str] | None:
        """The response headers this error asks for (``x-should-retry``, ``Retry-After``)."""
        headers: dict[str, str] = {}
        if self.should_retry is not None:
            headers["x-should-retry"] = "true" if self.should_retry else "false"
        if self.retry_after is not None:
            headers["retry-after"] = str(self.retry_after)
        return headers or None

    def envelope(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(InferbatchError):
    """The request is invalid."""

    status_code = 400
    type = "invalid_request_error"


class BadValue(InvalidRequest):
    """A value in the request cannot be stored as given."""

    # a NUL character in text, a number out of range: what the database refuses of a value


class Unauthorized(InferbatchError):
    """Missing or invalid API key. Send `Authorization: Bearer <key>`."""

    status_code = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(InferbatchError):
    """This needs an admin API key."""

    status_code = 403
    type = "invalid_request_error"
    code = "permission_denied"


class PermissionDenied(Forbidden):
    """Your role in this project may only read; creating, changing, cancelling, retrying
    or deleting needs the member or owner role."""

    type = "permission_error"
    code = "insufficient_permissions"


class NotFound(InferbatchError):
    """No such object."""

    status_code = 404
    type = "invalid_request_error"
    code = "not_found"


class Conflict(InferbatchError):
    """The object is not in a state that allows this."""

    status_code = 409
    type = "invalid_request_error"
    code = "invalid_state"
    should_retry = False


class TooLarge(InferbatchError):
    """The upload is larger than allowed."""

    status_code = 413
    type = "invalid_request_error"
    code = "file_too_large"


class QuotaExceeded(InferbatchError):
    """The project's quota does not leave room for this."""

    status_code = 429
    type = "rate_limit_exceeded"
    code = "quota_exceeded"
    should_retry = False
    # retrying at once gets the same answer: room comes back as the project's work finishes


class BodyTooLarge(TooLarge):
    """The request body is larger than allowed."""

    code = "request_too_large"


class HeadersTooLarge(InferbatchError):
    """The request's headers are larger than allowed."""

    status_code = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"


class TooManyFailures(InferbatchError):
    """Too many failed authentications; try again later."""

    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.retry_after = retry_after


class BadGateway(InferbatchError):
    """The remote server could not be reached or did not answer in time."""

    status_code = 502
    type = "server_error"
    code = "bad_gateway"
    should_retry = False


class Unavailable(InferbatchError):
    """The database is unavailable; try again shortly."""

    status_code = 503
    type = "server_error"
    code = "service_unavailable"


class StorageUnavailable(Unavailable):
    """File storage is unavailable; try again shortly."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        # clients get the default message; logs, /readyz and start-up errors the reason
        self.reason = reason
        self.args = (f"file storage unavailable: {reason}",)


def from_validation(errors: Sequence[Any]) -> InvalidRequest:
    """The first of a wire model's validation errors as OpenAI words it, naming the
    field (``metadata.priority``, ``limit``) in ``param``."""
    if not errors:
        return InvalidRequest()
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    kind = first.get("type", "")
    message = str(first.get("msg", "The request is invalid.")).removeprefix("Value error, ")
    if kind == "json_invalid":
        return InvalidRequest("The body is not valid JSON.")
    if param is None:
        return InvalidRequest("The body must be a JSON object.")
    if kind == "missing":
        return InvalidRequest(f"{param} is required.", param=param)
    if kind == "extra_forbidden":
        return InvalidRequest(f"Unrecognized request argument supplied: {param}.", param=param)
    return InvalidRequest(f"{param}: {message}.", param=param)
