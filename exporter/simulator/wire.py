"""What the simulator's endpoints and its HTTP handler exchange: the API's paths and content
types, one request, one response (with how a fault may break it) and the JSON:API error body."""

from __future__ import annotations

import enum
import json
import threading
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from typing import Any

TOKEN_PATH = "/oauth2/token"
STATIONS_PATH = "/api/cpoapi/v1/charging_stations/"
CONTROL_PREFIX = "/_sim/"
JSON = "application/json"
JSON_API = "application/vnd.api+json"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: Message
    body: bytes


class Ending(enum.Enum):
    """How the handler ends a response: normally, or as a fault breaks the connection."""

    COMPLETE = "complete"
    HALF_BODY = "send half of the body, then close"
    NO_RESPONSE = "close without a response"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: Any  # a JSON value, or bytes sent as they are
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()
    ending: Ending = Ending.COMPLETE
    pause: float = 0.0  # drip: seconds between the pieces of the head or body
    drip_head: bool = False  # drip the status line and headers, not the body
    wake: threading.Event | None = None  # set: send the rest of a drip at once
    padding: int = 0  # oversized: the size the body is padded to

    @property
    def payload(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()

    @property
    def streamed(self) -> bool:
        return self.pause > 0 or self.padding > 0


def phrase(status: int) -> str:
    """The reason phrase of ``status``, or "Error" for a code HTTP does not name."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def api_error(status: int, title: str, detail: str | None = None) -> Response:
    """A JSON:API error document, as the stations endpoint sends it."""
    error = {"status": str(status), "title": title}
    if detail:
        error["detail"] = detail
    return Response(status, {"errors": [error]}, JSON_API)
