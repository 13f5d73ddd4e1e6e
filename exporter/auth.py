"""OAuth2 client_credentials tokens: fetched once, cached, renewed before they expire."""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from exporter.errors import ApiHttpError, AuthError, ParseError
from exporter.http import (
    DEFAULT_LIMITS,
    DEFAULT_RETRY,
    Answer,
    Deadline,
    Limits,
    ResponseHook,
    RetryPolicy,
    environment_proxies,
    send,
)
from exporter.model import Secret
from exporter.redact import MAX_LENGTH, redact
from exporter.session import BoundedSession

LOG = logging.getLogger(__name__)

RENEW_MARGIN_MAX = 300.0
"""Renew at most this many seconds before expiry (and at least 10% of the lifetime before)."""

ASSUMED_LIFETIME = 3600.0
"""Lifetime assumed when the token endpoint sends no usable ``expires_in``."""

TOKEN_MAX_RESPONSE_SIZE = 64 * 1024
"""Size limit of a token endpoint's answer: a token answer is a few KB."""

MIN_LIFETIME = 10.0
MAX_LIFETIME = 86400.0
"""A usable ``expires_in`` is clamped to this range: a token is never fetched for every page,
and the expiry time stays a finite number (metrics, ``check --output json``)."""

RECENT_TOKENS = 4
"""Access tokens remembered (besides the current one) to mask them in error text."""

DESCRIPTION_LENGTH = 200
"""Characters kept of the token endpoint's ``error`` and ``error_description``."""

MAX_TOKEN_LENGTH = 8192
"""Characters of an access token at most: it goes into the Authorization header of every
request, and common servers refuse a header line past 8 KiB (nginx, Apache, Tomcat)."""

_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
"""What an access token may hold: visible ASCII. RFC 6750's b64token is a subset; a space
would split the header, CR or LF would end it, and no other character can go into it."""

_NUMBER = re.compile(r"[0-9]{1,15}(\.[0-9]{1,9})?")
"""A numeric string ``expires_in``, strictly: ASCII digits of bounded length (``float()`` also
reads full-width digits, '1_000' and '1e3')."""


def _lifetime(value: object) -> float | None:
    """``expires_in`` as finite positive seconds (numbers, or numeric strings as some servers
    send), clamped to the lifetime range; None when it is unusable (NaN, infinite, <= 0)."""
    if isinstance(value, str):
        if not _NUMBER.fullmatch(value.strip()):
            return None
        value = float(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        seconds = math.inf
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return min(MAX_LIFETIME, max(MIN_LIFETIME, seconds))


def _unusable(value: str) -> str:
    """Why an access token cannot go into an Authorization header, or ''. Never quotes it."""
    if len(value) > MAX_TOKEN_LENGTH:
        return f"{len(value)} characters, more than {MAX_TOKEN_LENGTH}"
    if _HEADER_SAFE.fullmatch(value):
        return ""
    if any(c in value for c in "\r\n"):
        return "it holds a line break"
    if not value.isascii():
        return "it holds a character outside ASCII"
    if " " in value:
        return "it holds a space"
    return "it holds a control character"


@dataclass(frozen=True, slots=True)
class Token:
    """An access token, the wall-clock time it expires (for the metrics) and the monotonic
    time it should be renewed (a step of the wall clock does not move that)."""

    value: str
    expires_at: float
    renew_at: float


class TokenSource:
    """Hands out a valid bearer token for one mandant; thread-safe.

    Fetching is single-flight: threads that need a token while one is being fetched wait for
    that fetch instead of starting their own, so the token endpoint sees one request.
    """

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        client_secret: Secret,
        auth_method: str,
        session: BoundedSession,
        on_response: ResponseHook | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        limits: Limits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._auth_method = auth_method
        self._session = session
        self._on_response = on_response or (lambda endpoint, code: None)
        self._retry = retry
        self._limits = replace(
            limits,
            max_response_size=TOKEN_MAX_RESPONSE_SIZE,
            size_advice="a token answer is a few KB",
        )
        self._proxies = environment_proxies(token_url)
        self._clock = clock
        self._monotonic = monotonic
        self._token: Token | None = None
        # Tuples, replaced whole: redact() may read them while a fetch goes on.
        self._recent: tuple[str, ...] = ()
        self._old_secrets: tuple[str, ...] = ()
        self._fetch_lock = threading.Lock()

    @property
    def expires_at(self) -> float | None:
        """Wall-clock expiry of the cached token, or None before the first token."""
        token = self._token
        return token.expires_at if token else None

    def token(self, deadline: Deadline) -> str:
        """A token that is not due for renewal, fetching a new one when needed."""
        token = self._token
        if token and self._monotonic() < token.renew_at:
            return token.value
        with self._fetch_lock:
            token = self._token
            if token and self._monotonic() < token.renew_at:
                return token.value
            self._token = self._fetch_rotated(deadline)
            self._recent = (*self._recent, self._token.value)[-RECENT_TOKENS:]
            return self._token.value

    def _fetch_rotated(self, deadline: Deadline) -> Token:
        """A new token; when the credentials are rejected and the secret came from a file that
        now holds another secret (rotated in place), once more with the new secret."""
        try:
            return self._fetch(deadline)
        except AuthError as exc:
            if not exc.rejected_credentials:
                raise
            fresh = self._client_secret.reread()
            if fresh is None or fresh == self._client_secret:
                raise
        LOG.info(
            "client secret file %s changed; asking for a token with the new secret", fresh.path
        )
        self._old_secrets = (*self._old_secrets, self._client_secret.reveal())[-2:]
        self._client_secret = fresh
        return self._fetch(deadline)

    def redact(self, text: str, limit: int = MAX_LENGTH) -> str:
        """``text`` without the client secret (current and replaced), the current and recent
        access tokens and control characters, cut to ``limit``: safe to log and to publish."""
        sensitive = (self._client_secret.reveal(), *self._old_secrets, *self._recent)
        return redact(text, sensitive, client_id=self._client_id, limit=limit)

    def invalidate(self, value: str) -> None:
        """Drop the cached token if it is still ``value`` (the API rejected it with a 401)."""
        with self._fetch_lock:
            if self._token and self._token.value == value:
                self._token = None

    def _fetch(self, deadline: Deadline) -> Token:
        host = urlsplit(self._token_url).netloc
        data = {"grant_type": "client_credentials"}
        params: dict[str, str] = {}
        auth: tuple[str, str] | None = None
        secret = self._client_secret.reveal()
        if self._auth_method == "basic":
            auth = (self._client_id, secret)
        elif self._auth_method == "post":
            data |= {"client_id": self._client_id, "client_secret": secret}
        else:  # "query", as the quickstart's curl sample does it
            params = {**data, "client_id": self._client_id, "client_secret": secret}
        response = send(
            self._session,
            "POST",
            self._token_url,
            endpoint="token",
            what=f"token endpoint {host}",
            on_response=self._on_response,
            data=data,
            params=params,
            auth=auth,
            headers={"Accept": "application/json"},
            deadline=deadline,
            retry=self._retry,
            limits=self._limits,
            proxies=self._proxies,
        )
        return self._read_token(response, host)

    def _read_token(self, response: Answer, host: str) -> Token:
        try:
            body = json.loads(response.body)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            body = None
        if response.status_code != 200:
            raise self._refusal(response.status_code, body, host)
        if not isinstance(body, dict):
            raise ParseError(f"token endpoint {host}: answer is not a JSON object")
        value = body.get("access_token")
        if not isinstance(value, str) or not value:
            raise ParseError(f"token endpoint {host}: answer has no access_token")
        problem = _unusable(value)
        if problem:
            raise AuthError(
                f"token endpoint {host} sent an access token that cannot go into an HTTP header "
                f"({problem}); refused, not kept: the token endpoint, or a proxy in between, "
                "is broken"
            )
        token_type = body.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            shown = self._remote_text(json.dumps(token_type, ensure_ascii=False), 40)
            raise AuthError(
                f"token endpoint {host}: token_type {shown} is not Bearer, the only kind of "
                "token this exporter can send"
            )
        lifetime = _lifetime(body.get("expires_in"))
        if lifetime is None:
            LOG.warning(
                "token endpoint %s sent no usable expires_in; assuming %ds", host, ASSUMED_LIFETIME
            )
            lifetime = ASSUMED_LIFETIME
        margin = min(RENEW_MARGIN_MAX, 0.1 * lifetime)
        LOG.debug("new access token from %s, valid for %ds", host, lifetime)
        return Token(
            value=value,
            expires_at=self._clock() + lifetime,
            renew_at=self._monotonic() + lifetime - margin,
        )

    def _remote_text(self, value: object, limit: int = DESCRIPTION_LENGTH) -> str:
        """A text field of the token endpoint's answer, made safe to show (or '')."""
        return self.redact(value, limit) if isinstance(value, str) else ""

    def _refusal(self, status: int, body: object, host: str) -> AuthError | ApiHttpError:
        """The error for a non-200 answer, keeping the OAuth2 error and error_description
        (redacted and cut: the server explains there why it refused)."""
        fields = body if isinstance(body, dict) else {}
        error = self._remote_text(fields.get("error"), 60)
        description = self._remote_text(fields.get("error_description"))
        detail = f": {description}" if description else ""
        if error.partition(" ")[0] == "invalid_client" or status == 401:
            code = f" ({error})" if error else f" (HTTP {status})"
            return AuthError(
                f"token endpoint {host} rejected the client credentials{code}{detail}: "
                "check the client id and client secret",
                status,
                rejected_credentials=True,
            )
        code = f" ({error})" if error else ""
        message = f"token endpoint {host}: HTTP {status}{code}{detail}"
        if status == 429 or status >= 500:
            return ApiHttpError(message, status)  # the endpoint is in trouble, not our credentials
        return AuthError(message, status)
