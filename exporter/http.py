"""One HTTP request to the token endpoint or the API: retried, bounded, counted, translated.

Connection errors and the statuses that mean "try again later" (429, 502, 503, 504) are
retried with exponential backoff and full jitter, honouring ``Retry-After`` up to a bound, and
never past the refresh's deadline. Every attempt, headers and body, has a wall-clock bound: a
socket timeout restarts with every byte, so a server that trickles its answer would outlast
it; a watchdog thread shuts the socket down when the bound has passed (``exporter.session``:
every request goes through a BoundedSession). The body is read streamed and refused past a
size limit. An answer that came but cannot be read (a head that is not HTTP/1.x, broken
chunked framing, a content encoding that does not decode) is a ParseError, not retried; a
connection that broke is retried. A number in a header is read strictly: ASCII digits,
bounded length. Exceptions of ``requests`` are never chained or formatted into our errors:
their text holds the request URL, which carries the client secret with
``--api.token-auth-method=query``.
"""

from __future__ import annotations

import http.client
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from exporter.errors import (
    ApiConnectionError,
    ApiTimeoutError,
    RedirectError,
    ResponseTooLargeError,
    TlsError,
    UnreadableAnswerError,
)
from exporter.session import BoundedSession, NegativeChunkSize, watching

LOG = logging.getLogger(__name__)

ResponseHook = Callable[[str, str], None]
"""Called with (endpoint, status code or ``error``) for every request made."""


class RequestCounter:
    """A ResponseHook counting the requests by (endpoint, status code); thread-safe."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def __call__(self, endpoint: str, code: str) -> None:
        with self._lock:
            key = (endpoint, code)
            self._counts[key] = self._counts.get(key, 0) + 1

    def counts(self) -> Mapping[tuple[str, str], int]:
        """A copy of the counts, safe to read while requests go on."""
        with self._lock:
            return MappingProxyType(dict(self._counts))


RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_REDIRECTS = 3
"""Redirects followed per request, all within the origin of the request."""
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 30.0
"""Default wall-clock bound of one request, headers and body (--api.request-timeout)."""
MAX_RESPONSE_SIZE = 8 * 1024 * 1024
"""Default size limit of one answer (--api.max-response-size): a page of 1000 stations is
about 0.5 MB, a 50 MB answer is refused before it is read whole."""
CHUNK_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """How long one request may take and how large its answer may be."""

    request_timeout: float = REQUEST_TIMEOUT
    max_response_size: int = MAX_RESPONSE_SIZE
    size_advice: str = "raise --api.max-response-size if answers this large are genuine"


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete HTTP answer: status, headers and the whole body (within the limits)."""

    status_code: int
    headers: Mapping[str, str]
    body: bytes


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

    def why_over(self) -> str:
        """Why no time remains: shutdown or the deadline itself."""
        if self._cancel.is_set():
            return "stopped, the exporter is shutting down"
        return "refresh deadline reached (--refresh.timeout)"


def environment_proxies(url: str) -> dict[str, str]:
    """The proxies HTTP(S)_PROXY / NO_PROXY give for ``url``, read once (sessions here do not
    read the environment on every request)."""
    return requests.utils.get_environ_proxies(url)


MAX_DIGITS = 18
"""Digits of a number in a header read at most: more is past every bound anyway."""
MAX_DATE_LENGTH = 40
"""Characters of an HTTP date at most (``Sun, 06 Nov 1994 08:49:37 GMT`` has 29)."""


def header_digits(value: str) -> bool:
    """Whether ``value`` is a decimal number in ASCII digits. ``str.isdigit`` alone is true for
    '²' and '٣', which ``float()`` refuses or reads as a number no HTTP server meant."""
    return value.isascii() and value.isdigit()


def retry_after(response: requests.Response | Answer) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or an HTTP date); None for
    anything else, which the caller treats as no header (the usual backoff)."""
    value = response.headers.get("Retry-After", "").strip()
    if header_digits(value):
        return float(value) if len(value) <= MAX_DIGITS else float(10**MAX_DIGITS)
    if not value or len(value) > MAX_DATE_LENGTH or not value.isascii():
        return None
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError, IndexError):
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


def _ssl_cause(error: BaseException) -> ssl.SSLError | None:
    """The ssl module's error inside the exceptions requests and urllib3 wrap around it."""
    return next((e for e in _causes(error) if isinstance(e, ssl.SSLError)), None)


def _causes(error: BaseException, depth: int = 0) -> Iterator[BaseException]:
    """``error`` and the exceptions requests and urllib3 wrapped into it (in its arguments,
    ``reason``, cause or context), depth first, at most 8 levels deep."""
    yield error
    if depth >= 8:
        return
    inner = [*error.args, getattr(error, "reason", None), error.__cause__, error.__context__]
    for candidate in inner:
        if isinstance(candidate, BaseException):
            yield from _causes(candidate, depth + 1)


def _unreadable(
    exc: requests.RequestException, what: str, status: int | None, encoding: str
) -> UnreadableAnswerError | None:
    """The error for an answer that came but cannot be read, if ``exc`` says so: a head that
    is not HTTP/1.x, chunked framing that is broken, a body that does not decode as its
    Content-Encoding says. None for a connection that failed or broke (worth a retry).
    ``status`` is the answer's status once its head was read."""
    for error in _causes(exc):
        problem = ""
        if isinstance(error, urllib3.exceptions.DecodeError):
            shown = encoding.strip().lower()[:40]
            problem = "could not decode the answer" + (
                f" (not a valid {shown!r} stream)" if shown else ""
            )
        elif isinstance(error, urllib3.exceptions.InvalidChunkLength | NegativeChunkSize) or (
            isinstance(error, urllib3.exceptions.ProtocolError)
            and "exceeded maximum allowed length" in str(error)
        ):
            problem = "could not read the answer (broken chunked encoding)"
        elif isinstance(error, http.client.RemoteDisconnected | http.client.IncompleteRead):
            return None  # the connection broke
        elif isinstance(error, http.client.LineTooLong):
            problem = "the answer is not HTTP/1.x (a header line longer than 64 KiB)"
        elif isinstance(error, http.client.UnknownProtocol):
            problem = "the answer is not HTTP/1.x (its status line names another version)"
        elif isinstance(error, http.client.BadStatusLine):
            problem = "the answer is not HTTP/1.x (a bad status line)"
        elif type(error) is http.client.HTTPException and "headers" in str(error):
            problem = "the answer is not HTTP/1.x (more than 100 header lines)"
        if problem:
            return UnreadableAnswerError(f"{what}: {problem}", status)
    return None


def _broken(exc: requests.RequestException) -> str:
    """What a failed connection did, in words."""
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):  # raised amid the body only
        return "the connection broke before the answer was complete"
    if any(isinstance(e, http.client.RemoteDisconnected) for e in _causes(exc)):
        return "the server closed the connection without answering"
    return f"cannot connect ({type(exc).__name__})"


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
    the body (the secret with --api.token-auth-method=post), a query string may carry it, and
    another host's API would publish its fleet as ours. Hooks run before requests follows.

    A redirect's body is never read: its connection is closed. requests would read it whole
    (past the size limit), and one that breaks after some of it was decoded makes requests
    raise RuntimeError."""
    start = origin(url)
    hops = 0

    def hook(response: requests.Response, *args: object, **kwargs: object) -> None:
        nonlocal hops
        if not response.is_redirect:
            return
        response.close()
        hops += 1
        location = response.headers.get("Location", "")
        try:  # UTF-8 sent as Latin-1, as requests reads it
            target = origin(urljoin(response.url, location.encode("latin-1").decode("utf-8")))
        except ValueError:  # not UTF-8, or "http://[::1": no URL at all
            raise RedirectError(
                f"{start} redirected (HTTP {response.status_code}) to a Location that is not a "
                "URL: not followed",
                response.status_code,
            ) from None
        if target != start:
            raise RedirectError(
                f"{start} redirected (HTTP {response.status_code}) to another origin, {target}: "
                "not followed, a redirect may carry the credentials; is the URL right?",
                response.status_code,
            )
        if hops > MAX_REDIRECTS:
            raise RedirectError(
                f"{start}: more than {MAX_REDIRECTS} redirects, not followed", response.status_code
            )

    return hook


def _size(size: int) -> str:
    for unit, factor in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


def _read_body(response: requests.Response, limits: Limits, what: str) -> bytes:
    """The whole body, streamed; ResponseTooLargeError as soon as it is known to pass the limit."""
    limit = limits.max_response_size
    refused = ResponseTooLargeError(
        f"{what}: answer larger than {_size(limit)}, refused; {limits.size_advice}",
        response.status_code,
    )
    length = response.headers.get("Content-Length", "").strip()
    if header_digits(length) and (len(length) > MAX_DIGITS or int(length) > limit):
        raise refused
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(CHUNK_SIZE):
        size += len(chunk)
        if size > limit:
            raise refused
        chunks.append(chunk)
    return b"".join(chunks)


def _timed_out(exc: BaseException) -> bool:
    """Whether a timeout is behind ``exc``: requests reports a read timeout within the body
    as a ConnectionError around urllib3's ReadTimeoutError."""
    error: object = exc
    for _ in range(10):  # the chain is short; a bound all the same
        if isinstance(error, urllib3.exceptions.NewConnectionError):
            return False  # a refused connection, though urllib3 derives it from a timeout
        if isinstance(error, TimeoutError | requests.Timeout | urllib3.exceptions.TimeoutError):
            return True
        if not isinstance(error, BaseException):
            return False
        first = error.args[0] if error.args else None
        error = (
            first
            if isinstance(first, BaseException)
            else getattr(error, "reason", None) or error.__context__
        )
    return False


class _Cut(Exception):
    """The watchdog cut the request at its wall-clock bound."""


def _attempt(
    session: BoundedSession,
    method: str,
    url: str,
    bound: float,
    limits: Limits,
    what: str,
    kwargs: dict[str, Any],
) -> Answer:
    """One request and its whole body within ``bound`` seconds of wall time."""
    status: int | None = None
    encoding = ""
    with watching(bound) as watch:
        try:
            response = session.request(
                method, url, timeout=(min(CONNECT_TIMEOUT, bound), bound), stream=True, **kwargs
            )
            status, encoding = response.status_code, response.headers.get("Content-Encoding", "")
            try:
                answer = Answer(status, response.headers, _read_body(response, limits, what))
            finally:
                response.close()  # returns a fully read connection to the pool, closes any other
        except requests.RequestException as exc:
            if watch.cut:  # whatever the cut made requests raise: no complete answer in time
                raise _Cut() from None
            unreadable = _unreadable(exc, what, status, encoding)
            if unreadable is not None:
                raise unreadable from None
            raise
    if watch.cut:  # cut amid the headers, http.client may take what came for a whole answer
        raise _Cut()
    return answer


@dataclass(frozen=True, slots=True)
class _Request:
    """One request as ``send`` makes it, attempt after attempt."""

    session: BoundedSession
    method: str
    url: str
    endpoint: str
    what: str
    on_response: ResponseHook
    deadline: Deadline
    limits: Limits
    kwargs: dict[str, Any]

    def attempt(self) -> Answer | ApiConnectionError | ApiTimeoutError:
        """One attempt, counted: its answer, or the failure of a connection worth retrying.
        Raises what is not worth a retry."""
        remaining = self.deadline.remaining()
        if remaining <= 0:
            raise ApiTimeoutError(f"{self.what}: {self.deadline.why_over()}")
        bound = min(self.limits.request_timeout, remaining)
        kwargs = {**self.kwargs, "hooks": {"response": same_origin_redirects(self.url)}}
        failure: ApiConnectionError | ApiTimeoutError
        try:
            answer = _attempt(
                self.session, self.method, self.url, bound, self.limits, self.what, kwargs
            )
        except (ResponseTooLargeError, RedirectError, UnreadableAnswerError) as exc:
            # Not retried: the server answered, and would answer the same again.
            self.on_response(self.endpoint, "error" if exc.status is None else str(exc.status))
            raise
        except requests.ConnectTimeout:
            failure = ApiTimeoutError(f"{self.what}: timed out connecting")
        except (_Cut, requests.Timeout):
            # A read timeout is not retried: the server got the request and may be overloaded.
            raise self._late(bound) from None
        except requests.exceptions.SSLError as exc:
            self.on_response(self.endpoint, "error")  # a certificate does not heal itself
            raise tls_error(self.what, self.url, exc) from None
        except requests.RequestException as exc:
            if _timed_out(exc) or self.deadline.remaining() <= 0:
                raise self._late(bound) from None
            failure = ApiConnectionError(f"{self.what}: {_broken(exc)}")
        else:
            self.on_response(self.endpoint, str(answer.status_code))
            return answer
        self.on_response(self.endpoint, "error")
        return failure

    def _late(self, bound: float) -> ApiTimeoutError:
        """The timeout of an attempt bound to ``bound`` seconds that got no complete answer,
        counted."""
        self.on_response(self.endpoint, "error")
        if bound < self.limits.request_timeout or self.deadline.remaining() <= 0:
            why = self.deadline.why_over()
        else:
            why = f"no complete answer within {bound:g}s (--api.request-timeout)"
        return ApiTimeoutError(f"{self.what}: timed out waiting for the answer: {why}")


def _pause(
    outcome: Answer | ApiConnectionError | ApiTimeoutError,
    attempt: int,
    retry: RetryPolicy,
    what: str,
) -> float | None:
    """Seconds to wait before retrying after ``outcome`` of try number ``attempt``; None when
    it is final: an answer that is no reason to retry, or asks for a longer wait than we do."""
    if not isinstance(outcome, Answer):
        return retry.backoff(attempt)
    if outcome.status_code not in RETRY_STATUSES:
        return None
    asked = retry_after(outcome)
    if asked is None:
        return retry.backoff(attempt)
    if asked > retry.max_retry_after:
        LOG.info("%s: Retry-After of %.0fs is longer than we wait", what, asked)
        return None
    return asked


def send(
    session: BoundedSession,
    method: str,
    url: str,
    *,
    endpoint: str,
    what: str,
    on_response: ResponseHook,
    deadline: Deadline,
    retry: RetryPolicy = DEFAULT_RETRY,
    limits: Limits = DEFAULT_LIMITS,
    **kwargs: Any,
) -> Answer:
    """Make the request, retrying what is worth retrying; count every attempt.

    Each attempt, headers and body, takes at most ``limits.request_timeout`` seconds and what
    is left of ``deadline``. Returns the last answer, which may still be an error status: the
    caller decides what a status means. Raises ApiTimeoutError when no complete answer came in
    time, ApiConnectionError when none came at all (or the connection broke amid it),
    UnreadableAnswerError for an answer that is not HTTP or does not decode,
    ResponseTooLargeError past the size limit; TypeError for a session that is not a
    BoundedSession, which would have no wall-clock bound.
    """
    if not isinstance(session, BoundedSession):
        raise TypeError(
            f"{what}: requests go through a BoundedSession (exporter.session), not a "
            f"{type(session).__name__}, which has no wall-clock bound"
        )
    request = _Request(session, method, url, endpoint, what, on_response, deadline, limits, kwargs)
    for attempt in range(1, retry.attempts + 1):
        outcome = request.attempt()
        pause = _pause(outcome, attempt, retry, what)
        if pause is None or attempt == retry.attempts or pause >= deadline.remaining():
            if not isinstance(outcome, Answer):
                raise outcome
            return outcome
        shown = outcome.status_code if isinstance(outcome, Answer) else outcome
        LOG.debug("%s: %s; retry %d in %.2fs", what, shown, attempt, pause)
        deadline.sleep(pause)
    raise AssertionError("unreachable: the last attempt returns or raises")
