"""OAuth2 client_credentials tokens: fetched once, cached, renewed before they expire."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import requests

from exporter.config import Secret
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

LOG = logging.getLogger(__name__)

RENEW_MARGIN_MAX = 300.0
"""Renew at most this many seconds before expiry (and at least 10% of the lifetime before)."""

ASSUMED_LIFETIME = 3600.0
"""Lifetime assumed when the token endpoint sends no usable ``expires_in``."""

TOKEN_MAX_RESPONSE_SIZE = 64 * 1024
"""Size limit of a token endpoint's answer: a token answer is a few KB."""


@dataclass(frozen=True, slots=True)
class Token:
    """An access token and the wall-clock times it expires and should be renewed."""

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
        session: requests.Session,
        on_response: ResponseHook | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        limits: Limits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.time,
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
        self._token: Token | None = None
        self._fetch_lock = threading.Lock()

    @property
    def expires_at(self) -> float | None:
        """Wall-clock expiry of the cached token, or None before the first token."""
        token = self._token
        return token.expires_at if token else None

    def token(self, deadline: Deadline) -> str:
        """A token that is not due for renewal, fetching a new one when needed."""
        token = self._token
        if token and self._clock() < token.renew_at:
            return token.value
        with self._fetch_lock:
            token = self._token
            if token and self._clock() < token.renew_at:
                return token.value
            self._token = self._fetch(deadline)
            return self._token.value

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
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if response.status_code != 200:
            if error == "invalid_client":
                raise AuthError(
                    f"token endpoint {host} rejected the client credentials (invalid_client): "
                    "check the client id and client secret"
                )
            detail = f" ({error})" if isinstance(error, str) else ""
            message = f"token endpoint {host}: HTTP {response.status_code}{detail}"
            if response.status_code == 429 or response.status_code >= 500:
                raise ApiHttpError(message)  # the endpoint is in trouble, not our credentials
            raise AuthError(message)
        if not isinstance(body, dict):
            raise ParseError(f"token endpoint {host}: answer is not a JSON object")
        value = body.get("access_token")
        if not isinstance(value, str) or not value:
            raise ParseError(f"token endpoint {host}: answer has no access_token")
        token_type = body.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise ParseError(f"token endpoint {host}: unsupported token_type {token_type!r}")
        lifetime = body.get("expires_in")
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            LOG.warning("token endpoint sent no usable expires_in; assuming %ds", ASSUMED_LIFETIME)
            lifetime = ASSUMED_LIFETIME
        now = self._clock()
        margin = min(RENEW_MARGIN_MAX, 0.1 * lifetime)
        LOG.debug("new access token from %s, valid for %ds", host, lifetime)
        return Token(value=value, expires_at=now + lifetime, renew_at=now + lifetime - margin)
