"""One HTTP request to the token endpoint or the API: retried, bounded, counted, translated.

Connection errors and the statuses that mean "try again later" (429, 502, 503, 504) are
retried with exponential backoff and full jitter, honouring ``Retry-After`` up to a bound, and
never past the refresh's deadline. Exceptions of ``requests`` are never chained or formatted
into our errors: their text holds the request URL, which carries the client secret with
``--token-auth-method=query``.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from exporter.errors import ApiConnectionError, ApiTimeoutError, RedirectError, TlsError

LOG = logging.getLogger(__name__)

ResponseHook = Callable[[str, str], None]
"""Called with (endpoint, status code or ``error``) for every request made."""

RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_REDIRECTS = 3
"""Redirects followed per request, all within the origin of the request."""
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently one request is retried."""

    attempts: int = 4
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_retry_after: float = 120.0

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff before retry number ``attempt`` (1, 2, ...)."""
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)))


DEFAULT_RETRY = RetryPolicy()


class Deadline:
    """The time a refresh may take; waits end early when ``cancel`` is set (shutdown)."""

    def __init__(
        self,
        seconds: float,
        cancel: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._end = clock() + seconds
        self._cancel = cancel or threading.Event()

    def remaining(self) -> float:
        return 0.0 if self._cancel.is_set() else max(0.0, self._end - self._clock())

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (never past the deadline), or until cancelled."""
        self._cancel.wait(min(seconds, self.remaining()))


def environment_proxies(url: str) -> dict[str, str]:
    """The proxies HTTP(S)_PROXY / NO_PROXY give for ``url``, read once (sessions here do not
    read the environment on every request)."""
    return requests.utils.get_environ_proxies(url)


def retry_after(response: requests.Response) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def tls_error(what: str, url: str, error: BaseException) -> TlsError:
    """A TLS failure in words: untrusted certificate (and what to set), or a failed handshake."""
    host = urlsplit(url).hostname
    cause = _ssl_cause(error)
    if isinstance(cause, ssl.SSLCertVerificationError):
        problem = getattr(cause, "verify_message", None) or "certificate verify failed"
        return TlsError(
            f"{what}: TLS certificate of {host} not trusted ({problem}); if a private CA or a "
            "TLS-inspecting proxy is in the way, set ca_file (--api.ca-file) or "
            "REQUESTS_CA_BUNDLE to its CA certificate"
        )
    problem = (cause.reason or "").lower().replace("_", " ") if cause else ""
    return TlsError(
        f"{what}: TLS handshake with {host} failed ({problem or 'no reason given'}); does "
        "the URL's scheme and port speak HTTPS?"
    )


def _ssl_cause(error: BaseException, depth: int = 0) -> ssl.SSLError | None:
    """The ssl module's error inside the exceptions requests and urllib3 wrap around it."""
    if isinstance(error, ssl.SSLError):
        return error
    if depth > 8:
        return None
    inner = [*error.args, getattr(error, "reason", None), error.__cause__, error.__context__]
    for candidate in inner:
        if isinstance(candidate, BaseException):
            found = _ssl_cause(candidate, depth + 1)
            if found is not None:
                return found
    return None


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url`` (the port made explicit): what a redirect may not
    change. Never the path or query, which may carry the client secret."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = None
    host = (parts.hostname or "").lower()
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def same_origin_redirects(url: str) -> Callable[..., None]:
    """A requests response hook that lets requests follow at most MAX_REDIRECTS redirects,
    each to the origin of ``url``, and raises RedirectError for any other: a 307/308 re-sends
    the body (the secret with --token-auth-method=post), a query string may carry it, and
    another host's API would publish its fleet as ours. Hooks run before requests follows."""
    start = origin(url)
    hops = 0

    def hook(response: requests.Response, *args: object, **kwargs: object) -> None:
        nonlocal hops
        if not response.is_redirect:
            return
        target = origin(urljoin(response.url, response.headers.get("Location", "")))
        hops += 1
        if target != start:
            response.close()
            raise RedirectError(
                f"{start} redirected (HTTP {response.status_code}) to another origin, {target}: "
                "not followed, a redirect may carry the credentials; is the URL right?"
            )
        if hops > MAX_REDIRECTS:
            response.close()
            raise RedirectError(f"{start}: more than {MAX_REDIRECTS} redirects, not followed")

    return hook


def send(
    session: requests.Session,
    method: str,
    url: str,
    *,
    endpoint: str,
    what: str,
    on_response: ResponseHook,
    deadline: Deadline,
    retry: RetryPolicy = DEFAULT_RETRY,
    **kwargs: Any,
) -> requests.Response:
    """Make the request, retrying what is worth retrying; count every attempt.

    Returns the last response, which may still be an error status: the caller decides what a
    status means. Raises ApiTimeoutError or ApiConnectionError when no answer came.
    """
    for attempt in range(1, retry.attempts + 1):
        remaining = deadline.remaining()
        if remaining <= 0:
            raise ApiTimeoutError(f"{what}: refresh deadline reached")
        timeout = (min(CONNECT_TIMEOUT, remaining), min(READ_TIMEOUT, remaining))
        failure: Exception | None = None
        try:
            hooks = {"response": same_origin_redirects(url)}
            response = session.request(method, url, timeout=timeout, hooks=hooks, **kwargs)
        except requests.ConnectTimeout:
            failure = ApiTimeoutError(f"{what}: timed out connecting")
        except requests.Timeout:
            # A read timeout is not retried: the server got the request and may be overloaded.
            on_response(endpoint, "error")
            raise ApiTimeoutError(f"{what}: timed out waiting for the answer") from None
        except requests.exceptions.SSLError as exc:
            on_response(endpoint, "error")  # not retried: a certificate does not heal itself
            raise tls_error(what, url, exc) from None
        except requests.RequestException as exc:
            failure = ApiConnectionError(f"{what}: cannot connect ({type(exc).__name__})")
        if failure is not None:
            on_response(endpoint, "error")
            delay = retry.backoff(attempt)
        else:
            on_response(endpoint, str(response.status_code))
            if response.status_code not in RETRY_STATUSES:
                return response
            asked = retry_after(response)
            if asked is not None and asked > retry.max_retry_after:
                LOG.info("%s: Retry-After of %.0fs is longer than we wait", what, asked)
                return response
            delay = retry.backoff(attempt) if asked is None else asked
        if attempt == retry.attempts or delay >= deadline.remaining():
            if failure is not None:
                raise failure
            return response
        LOG.debug(
            "%s: %s; retry %d in %.2fs", what, failure or response.status_code, attempt, delay
        )
        deadline.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")
