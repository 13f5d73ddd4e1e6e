"""One HTTP request to the token endpoint or the API: counted, and its failures translated.

Exceptions of ``requests`` are never chained or formatted into our errors: their text holds
the request URL, which carries the client secret with ``--token-auth-method=query``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import requests

from exporter.errors import ApiConnectionError, ApiTimeoutError

ResponseHook = Callable[[str, str], None]
"""Called with (endpoint, status code or ``error``) for every request made."""


def send(
    session: requests.Session,
    method: str,
    url: str,
    *,
    endpoint: str,
    what: str,
    on_response: ResponseHook,
    **kwargs: Any,
) -> requests.Response:
    """Make the request; count it under ``endpoint``; name failures after ``what``."""
    try:
        response = session.request(method, url, **kwargs)
    except requests.Timeout:
        on_response(endpoint, "error")
        raise ApiTimeoutError(f"{what}: timed out") from None
    except requests.RequestException as exc:
        on_response(endpoint, "error")
        raise ApiConnectionError(f"{what}: cannot connect ({type(exc).__name__})") from None
    on_response(endpoint, str(response.status_code))
    return response
