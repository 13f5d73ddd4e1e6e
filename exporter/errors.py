"""The project's exception hierarchy: one place, messages that tell the user what to change.

The ``reason`` of each kind of RefreshError is the value of the ``reason`` label of the failure
counter, and ``FAILURE_REASONS`` is derived from them: a new reason is a new subclass here.
"""

from typing import Any, ClassVar


class ExporterError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(ExporterError):
    """A setting is missing or wrong; the message names the setting."""


_REASONS: list[str] = []
"""Each new ``reason`` of a RefreshError subclass, in the order the classes are defined."""


class RefreshError(ExporterError):
    """A refresh failed; ``reason`` is one of the fixed failure reasons of the metrics.
    ``status`` is the HTTP status of the answer that failed it, None when no answer did (or
    one whose status is no part of the failure)."""

    reason: ClassVar[str] = "http"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.reason not in _REASONS:
            _REASONS.append(cls.reason)


class AuthError(RefreshError):
    """The token endpoint refused us or answered something unusable, or the API refused the
    token; ``status`` is the refusal's HTTP status, ``rejected_credentials`` set when the token
    endpoint rejected the client id and secret (invalid_client or HTTP 401)."""

    reason = "auth"

    def __init__(
        self, message: str, status: int | None = None, *, rejected_credentials: bool = False
    ) -> None:
        super().__init__(message, status)
        self.rejected_credentials = rejected_credentials


class ApiHttpError(RefreshError):
    """The API or the token endpoint answered with an HTTP error status, ``status``."""

    reason = "http"


class ApiTimeoutError(RefreshError):
    """A request to the token endpoint or the API timed out."""

    reason = "timeout"


class ApiConnectionError(RefreshError):
    """The token endpoint or the API could not be reached."""

    reason = "connection"


class ParseError(RefreshError):
    """The API or the token endpoint answered something we cannot read: not HTTP, not
    decodable, not JSON, or not the documented shape."""

    reason = "parse"


class UnreadableAnswerError(ParseError):
    """An answer came but cannot be read: its head is not HTTP/1.x, its chunked framing is
    broken, or its body does not decode as its Content-Encoding says. ``status`` is the
    answer's HTTP status once its head was read, for the request counter."""


class PaginationError(RefreshError):
    """The listing changed while it was read, twice in a row: nothing new is published."""

    reason = "pagination"


class TlsError(ApiConnectionError):
    """The TLS handshake failed, usually because the server's certificate is not trusted."""

    reason = "tls"


class RedirectError(ApiHttpError):
    """The server redirected us to another origin (or too often); the redirect is not followed:
    it may carry the client secret or lead to another mandant's fleet. ``status`` is the
    redirect's HTTP status, for the request counter."""


class ResponseTooLargeError(RefreshError):
    """An answer was larger than the size limit; it was refused unread and its connection
    dropped. ``status`` is the answer's HTTP status, for the request counter."""

    reason = "too_large"


class ListingTooLargeError(RefreshError):
    """The listing has more stations, or pages, than one read may hold (--api.max-stations,
    MAX_PAGES): the read stops there and nothing of it is published."""

    reason = "too_large"


FAILURE_REASONS = tuple(_REASONS)
"""The fixed set of values of the ``reason`` label of the failure counter, in the order the
classes above first give them (the golden exposition pins it): append new kinds at the end."""
