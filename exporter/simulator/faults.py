"""The simulator's faults: FAULT_KINDS, the one table of what each kind does and where, the
validated ``Fault`` and what it does to a request. Loaded only when a fault is added (by
``Fault`` in Python or POST /_sim/faults): a demo never needs it."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol
from urllib.parse import SplitResult, quote, quote_plus

from exporter.simulator.inventory import Inventory
from exporter.simulator.wire import JSON, Ending, Request, Response, api_error, phrase

STATIONS = ("stations",)
TOKEN = ("token",)
FAULT_ENDPOINTS = ("stations", "token")


@dataclass(frozen=True, slots=True)
class FaultKind:
    """One row of FAULT_KINDS: what a fault of this kind does to a matching request, and the
    endpoints it exists for."""

    does: str
    endpoints: tuple[str, ...] = FAULT_ENDPOINTS


# The page kinds change 200 pages only (a 401 stays a plain 401) and exist for stations only.
FAULT_KINDS: dict[str, FaultKind] = {
    "status": FaultKind(
        "answer ``status`` with a JSON:API (stations) or OAuth2 (token) error body and "
        "``Retry-After: retry_after`` when given"
    ),
    "latency": FaultKind("wait ``seconds`` more, then answer normally"),
    "hang": FaultKind("answer nothing for ``seconds`` (30), then close; a clear or stop ends it"),
    "disconnect": FaultKind("send headers with the full Content-Length, half the body, then close"),
    "truncated": FaultKind("the first half of the body with an honest Content-Length"),
    "html": FaultKind("a proxy's HTML error page, with 200 or ``status``"),
    "wrong_content_type": FaultKind("the normal body as text/plain"),
    "no_data": FaultKind('the page without "data"', STATIONS),
    "no_meta": FaultKind('the page without "meta" and "links"', STATIONS),
    "null_attributes": FaultKind('every row\'s "attributes" is null', STATIONS),
    "wrong_types": FaultKind(
        "attribute values are numbers, lists, objects, booleans; total a string", STATIONS
    ),
    "data_not_list": FaultKind(
        '"data" is the page\'s first row (an object) instead of a list', STATIONS
    ),
    "revoke_token": FaultKind("revoke every token first (the request gets 401 on stations)"),
    "expire_token": FaultKind(
        "expire every token first (401 as well; listed as expired, not revoked)"
    ),
    "insert_rows": FaultKind("insert one station at the start of the inventory first", STATIONS),
    "delete_rows": FaultKind("delete the inventory's first station first", STATIONS),
    "total_drift": FaultKind("meta.pagination.total is one too many", STATIONS),
    "duplicate_rows": FaultKind(
        "the page's first row is the previous page's last one (not at offset 0)", STATIONS
    ),
    "skip_row": FaultKind(
        "the page starts one row late, the row at page[offset] left out, the total unchanged "
        "(not at offset 0): a torn read that no change of the fleet explains",
        STATIONS,
    ),
    "echo_secret": FaultKind(
        "401 whose error and error_description echo the client secret plain, URL-encoded, "
        "JSON-escaped and in base64 of id:secret (plain and form-encoded, standard and URL-safe)",
        TOKEN,
    ),
    "huge_error": FaultKind(
        "400 with a 60 KB error_description holding the secret: far longer than a log line, "
        "yet under the exporter's 64 KiB token cap",
        TOKEN,
    ),
    "expires_in_nan": FaultKind("a valid token whose expires_in is NaN (raw JSON text)", TOKEN),
    "expires_in_infinity": FaultKind("a valid token whose expires_in is Infinity", TOKEN),
    "expires_in_1e400": FaultKind("a valid token whose expires_in is 1e400", TOKEN),
    "expires_in_negative": FaultKind("a valid token whose expires_in is -3600", TOKEN),
    "expires_in_string": FaultKind('a valid token whose expires_in is "3600"', TOKEN),
    "redirect": FaultKind(
        "``status`` (307 unless given: 301, 302, 303, 307 or 308) to the same path and query "
        "at another origin: a second simulator on another port with the same client and a "
        "fleet of its own (3 stations) that it serves without a token; its "
        "GET /_sim/credentials counts the requests that carried the client secret there"
    ),
    "surrogate_label": FaultKind(
        "the page's last row's label ends in a lone surrogate (JSON \"\\ud800\")", STATIONS
    ),
    "non_utf8_label": FaultKind(
        "the page's last row's label ends in bytes that are not UTF-8", STATIONS
    ),
    "control_label": FaultKind(
        "the page's last row's label holds CR and ESC (a forged log line)", STATIONS
    ),
    "long_label": FaultKind(
        "the page's last row's label is LONG_LABEL_LENGTH characters longer", STATIONS
    ),
    "duplicate_station": FaultKind(
        "the listing has the inventory's first station once more at its end, in every read, "
        "with a total that counts it (the API's own duplicate)",
        STATIONS,
    ),
    "drip": FaultKind(
        "the normal answer, its body (or with ``part: headers`` its status line and headers) "
        "sent DRIP_BYTES at a time every ``seconds`` (1); a clear sends the rest at once"
    ),
    "oversized": FaultKind(
        "the normal answer padded to ``size`` bytes (50 MB) of valid JSON, with an honest "
        "Content-Length, streamed without being held in memory"
    ),
    "endless": FaultKind(
        "a listing that never ends: every page full of stations not listed before it, "
        "``per_page`` of them whatever page[limit] asks (else page[limit] as clamped), with no "
        "total and lastPage false",
        STATIONS,
    ),
    "endless_wide": FaultKind(
        "as endless, every page as full as page[limit] asks, but every station's texts and "
        "firmware are 256 characters outside the Basic Multilingual Plane (the widest text "
        "the exporter keeps: about 5,400 bytes a station held)",
        STATIONS,
    ),
    "new_fleet": FaultKind(
        "every read (a request at page[offset]=0) lists a new fleet: as many stations as the "
        "inventory, none of them listed in an earlier read, with a total that matches",
        STATIONS,
    ),
}
EXPIRES_IN_TEXT = {
    "expires_in_nan": "NaN",
    "expires_in_infinity": "Infinity",
    "expires_in_1e400": "1e400",
    "expires_in_negative": "-3600",
    "expires_in_string": '"3600"',
}
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
HUGE_ERROR_LENGTH = 60_000
HANG_SECONDS = 30.0
MAX_FAULT_SECONDS = 3600.0
LONG_LABEL_LENGTH = 100_000
CONTROL_LABEL_SUFFIX = "\r\x1b[2Klevel=error msg=forged"
"""What control_label appends: a carriage return and an ANSI escape that, written raw to a
terminal, erase the real log line and show a forged one."""
_NOT_UTF8 = b" M\xfcnchen \xff"  # Latin-1 text and a byte that starts no UTF-8 character
_NOT_UTF8_MARKER = "@@not-utf-8@@"
_LABEL_SUFFIXES = {
    "surrogate_label": "\ud800",
    "non_utf8_label": _NOT_UTF8_MARKER,
    "control_label": CONTROL_LABEL_SUFFIX,
    "long_label": " " + "x" * (LONG_LABEL_LENGTH - 1),
}
DRIP_SECONDS = 1.0
DRIP_PARTS = ("body", "headers")
OVERSIZED_BYTES = 50_000_000
MAX_OVERSIZED_BYTES = 2**30
MAX_ENDLESS_ROWS = 100_000
ENDLESS_ID_BASE = 0xE0D1E55 << 96
"""The UUID (as an integer) of an endless listing's station at offset 0; offset n is n more,
and in the new_fleet listing of read r, n + r * 2**40."""


class FaultTarget(Protocol):
    """What a fault acts on: the Simulator, as this module sees it without importing it."""

    @property
    def inventory(self) -> Inventory: ...

    @property
    def client(self) -> tuple[str, str]: ...

    def revoke_tokens(self) -> int: ...

    def expire_tokens(self) -> int: ...

    def other_origin(self) -> str: ...

    def answer(
        self, endpoint: str, request: Request, url: SplitResult, fault: Fault | None
    ) -> Response: ...


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    in_range = (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= minimum
        and (maximum is None or value <= maximum)
    )
    if not in_range:
        bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise ValueError(f"{name} must be an integer {bounds}, got {value!r}")


def _check_seconds(value: object, kind: str) -> None:
    if not (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and 0 <= value <= MAX_FAULT_SECONDS
    ):
        raise ValueError(
            f"seconds for a {kind} fault must be a number from 0 to {MAX_FAULT_SECONDS:g}, "
            f"got {value!r}"
        )


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault to inject into requests to ``endpoint``; what each kind does is listed in
    FAULT_KINDS. Invalid combinations raise ValueError with what to change.

    The first ``after`` requests to ``endpoint`` once it is on pass it by (each fault counts
    every such request, even one that an earlier fault applies to); then the first fault that
    is past its ``after`` applies, to ``times`` requests (every one with ``times=None``), and
    switches itself off.
    """

    kind: str
    endpoint: str = "stations"
    status: int | None = None
    retry_after: str | None = None
    seconds: float | None = None
    times: int | None = None
    after: int = 0
    part: str | None = None
    size: int | None = None
    per_page: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {', '.join(FAULT_KINDS)}")
        if self.endpoint not in FAULT_ENDPOINTS:
            raise ValueError(f"endpoint must be 'stations' or 'token', got {self.endpoint!r}")
        endpoints = FAULT_KINDS[self.kind].endpoints
        if self.endpoint not in endpoints:
            raise ValueError(f"a {self.kind} fault works on the {endpoints[0]} endpoint only")
        if self.kind == "status":
            _check_int("status", self.status, 400, 599)
        elif self.kind == "html" and self.status is not None:
            _check_int("status", self.status, 200, 599)
        elif self.kind == "redirect" and self.status is not None:
            if self.status not in REDIRECT_STATUSES or isinstance(self.status, bool):
                raise ValueError(
                    f"status of a redirect fault must be one of {REDIRECT_STATUSES}, "
                    f"got {self.status!r}"
                )
        elif self.status is not None:
            raise ValueError(
                f"status is for status and html faults and redirects, not for {self.kind}"
            )
        if self.retry_after is not None and self.kind != "status":
            raise ValueError(f"retry_after is for status faults, not for {self.kind}")
        if self.retry_after is not None and not (
            isinstance(self.retry_after, str)
            and self.retry_after.strip()
            and self.retry_after.isascii()
            and self.retry_after.isprintable()
        ):
            raise ValueError(
                "retry_after must be a header value such as '1' or "
                f"'Wed, 21 Oct 2015 07:28:00 GMT', got {self.retry_after!r}"
            )
        if self.kind == "latency" or (self.kind in ("hang", "drip") and self.seconds is not None):
            _check_seconds(self.seconds, self.kind)
        elif self.seconds is not None:
            raise ValueError(f"seconds is for latency, hang and drip faults, not for {self.kind}")
        if self.part is not None and (self.kind != "drip" or self.part not in DRIP_PARTS):
            raise ValueError(f"part is 'body' or 'headers', for drip faults; got {self.part!r}")
        if self.size is not None and self.kind != "oversized":
            raise ValueError(f"size is for oversized faults, not for {self.kind}")
        if self.size is not None:
            _check_int("size", self.size, 1, MAX_OVERSIZED_BYTES)
        if self.per_page is not None and self.kind != "endless":
            raise ValueError(f"per_page is for endless faults, not for {self.kind}")
        if self.per_page is not None:
            _check_int("per_page", self.per_page, 1, MAX_ENDLESS_ROWS)
        if self.times is not None:
            _check_int("times", self.times, 1)
        _check_int("after", self.after, 0)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Fault:
        """A fault from a control request's JSON object; ValueError names what is wrong."""
        names = [field.name for field in fields(cls)]
        unknown = sorted(set(body) - set(names))
        if unknown:
            raise ValueError(f"unknown fault fields {unknown}; a fault has {', '.join(names)}")
        if "kind" not in body:
            raise ValueError(f"a fault needs a kind, one of {', '.join(FAULT_KINDS)}")
        return cls(**body)

    def respond(
        self,
        target: FaultTarget,
        endpoint: str,
        request: Request,
        url: SplitResult,
        wake: threading.Event,
    ) -> Response:
        """Answer one request to ``endpoint`` with this fault applied around ``target``'s
        normal answer; setting ``wake`` ends the fault's waits early."""
        kind = self.kind
        if kind == "status":
            return _status_response(endpoint, self)
        if kind == "redirect":
            location = target.other_origin() + request.path
            return Response(self.status or 307, b"", headers=(("Location", location),))
        if kind in ("echo_secret", "huge_error"):
            return _echo_secret_response(kind, target.client)
        if kind == "html":
            return _html_response(self.status)
        if kind in ("hang", "latency"):
            wake.wait(HANG_SECONDS if self.seconds is None else self.seconds)
            if kind == "hang":
                return Response(0, b"", ending=Ending.NO_RESPONSE)
        elif kind == "revoke_token":
            target.revoke_tokens()
        elif kind == "expire_token":
            target.expire_tokens()
        elif kind == "insert_rows":
            target.inventory.add(1, at_start=True)
        elif kind == "delete_rows":
            target.inventory.remove_first(1)
        response = target.answer(endpoint, request, url, self)
        if kind in EXPIRES_IN_TEXT and response.status == 200:
            marker = '"expires_in: raw"'
            text = json.dumps(response.body | {"expires_in": "expires_in: raw"})
            return replace(response, body=text.replace(marker, EXPIRES_IN_TEXT[kind]).encode())
        if kind == "disconnect":
            return replace(response, ending=Ending.HALF_BODY)
        if kind == "truncated":
            payload = response.payload
            return replace(response, body=payload[: len(payload) // 2])
        if kind == "wrong_content_type":
            return replace(response, content_type="text/plain")
        if kind == "drip":
            pause = DRIP_SECONDS if self.seconds is None else self.seconds
            return replace(response, pause=pause, drip_head=self.part == "headers", wake=wake)
        if kind == "oversized":
            return replace(response, padding=self.size or OVERSIZED_BYTES)
        return response

    def rows(
        self, inventory: Inventory, offset: int, limit: int, read: int
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of stations and the total, as the stations endpoint lists them with this
        fault on in its ``read``-th read (the requests at page[offset]=0 so far)."""
        if self.kind == "endless":
            count = self.per_page or limit
            return [_endless_station(offset + n) for n in range(count)], offset + count + 1
        if self.kind == "endless_wide":
            return [_wide(_endless_station(offset + n)) for n in range(limit)], offset + limit + 1
        if self.kind == "new_fleet":
            total = len(inventory)
            end = min(offset + limit, total)
            return [_endless_station(n, read) for n in range(offset, end)], total
        if self.kind == "duplicate_station":
            listing = inventory.stations()  # one consistent view, as page() gives
            listing += listing[:1]
            return listing[offset : offset + limit], len(listing)
        if self.kind == "skip_row" and offset > 0:
            return inventory.page(offset + 1, limit)
        # duplicate_rows reads one row more, the previous page's last, in the same slice.
        start = offset - 1 if self.kind == "duplicate_rows" and offset > 0 else offset
        window, total = inventory.page(start, limit + offset - start)
        rows = window[offset - start :]
        if start < offset and rows:
            rows[0] = window[0]
        return rows, total

    def page(self, document: dict[str, Any]) -> Any:
        """The stations page ``document`` as this fault sends it: reshaped in place, or as bytes
        that are not UTF-8."""
        _reshape(document, self.kind)
        if self.kind == "non_utf8_label":
            return json.dumps(document).encode().replace(_NOT_UTF8_MARKER.encode(), _NOT_UTF8)
        return document


def _endless_station(offset: int, read: int = 0) -> dict[str, Any]:
    """The station an endless listing (or the ``read``-th new fleet) has at ``offset``: never
    twice in one read, and as large as one of the inventory's."""
    return {
        "type": "charging_stations",
        "id": str(uuid.UUID(int=ENDLESS_ID_BASE + (read << 40) + offset)),
        "attributes": {
            "label": f"Endless {offset}",
            "chargeBoxIdentity": f"cp_endless_{offset}",
            "iccid": f"8949{offset:015d}",
            "imsi": f"26201{offset % 10**10:010d}",
            "serialnumber": f"SN{offset % 10**8:08d}",
            "firmwareVersion": "2.4.1",
        },
    }


def _wide(station: dict[str, Any]) -> dict[str, Any]:
    """``station`` with every text, firmware included, 256 characters outside the BMP."""
    wide = "\U0001f600" * 255
    attributes = station["attributes"]
    for name in ("label", "chargeBoxIdentity", "serialnumber", "firmwareVersion"):
        attributes[name] = wide + attributes["label"][-1]
    return station


def _oauth_error(status: int) -> str:
    """The RFC 6749 error code a token endpoint would send with ``status``."""
    if status in (400, 401):
        return "invalid_client"
    if status == 403:
        return "unauthorized_client"
    if status == 429 or status >= 500:
        return "temporarily_unavailable"
    return "invalid_request"


def _status_response(endpoint: str, fault: Fault) -> Response:
    status = fault.status
    assert status is not None  # Fault checks it for kind "status"
    headers = () if fault.retry_after is None else (("Retry-After", fault.retry_after),)
    if endpoint == "token":
        return Response(status, {"error": _oauth_error(status)}, JSON, headers)
    return replace(api_error(status, phrase(status)), headers=headers)


def _html_response(status: int | None) -> Response:
    """A proxy's error page; served with 200 it still says 502, as captive portals do."""
    status = status or 200
    shown = status if status >= 400 else 502
    page = f"<html><body><h1>{shown} {phrase(shown)}</h1></body></html>"
    return Response(status, page.encode(), "text/html")


def _echo_secret_response(kind: str, client: tuple[str, str]) -> Response:
    """A token endpoint error that echoes the client secret: in every form a careless server
    might (echo_secret), or inside 60 KB of text (huge_error)."""
    client_id, secret = client
    if kind == "huge_error":
        filler = "A" * HUGE_ERROR_LENGTH
        description = f"secret {secret} refused {filler} {secret}"
        return Response(400, {"error": "invalid_request", "error_description": description})
    basic = f"{client_id}:{secret}".encode()
    form = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    forms = [
        quote(secret, safe=""),
        quote_plus(secret),
        json.dumps(secret),
        base64.b64encode(basic).decode(),
        base64.urlsafe_b64encode(basic).decode().rstrip("="),
        base64.b64encode(form).decode(),
        f"Basic {base64.b64encode(b'x' + basic).decode()}",
    ]
    description = "credentials " + " | ".join(forms) + " rejected\nlevel=error forged line"
    return Response(401, {"error": f"invalid_client {secret}", "error_description": description})


def _wrong_type(index: int, value: Any) -> Any:
    return (12345, [value], {"value": value}, True)[index % 4]


def _reshape(document: dict[str, Any], kind: str) -> None:
    """Apply a document fault to a stations page in place."""
    rows = document["data"]
    pagination = document["meta"]["pagination"]
    if kind == "no_data":
        del document["data"]
    elif kind == "no_meta":
        del document["meta"], document["links"]
    elif kind == "null_attributes":
        for row in rows:
            row["attributes"] = None
    elif kind == "wrong_types":
        for row in rows:
            row["attributes"] = {
                name: _wrong_type(index, value)
                for index, (name, value) in enumerate(row["attributes"].items())
            }
        pagination["total"] = str(pagination["total"])
    elif kind == "data_not_list":
        document["data"] = rows[0] if rows else {}
    elif kind == "total_drift":
        pagination["total"] += 1
    elif kind in ("endless", "endless_wide"):
        del pagination["total"]
        pagination["lastPage"] = False
    elif kind in _LABEL_SUFFIXES and rows:
        attributes = rows[-1]["attributes"]
        attributes["label"] = f"{attributes.get('label') or ''}{_LABEL_SUFFIXES[kind]}"
