"""A be.ENERGISED CPO API double for the exporter's --demo mode, the tests and the benchmarks.

It serves the two documented endpoints (OAuth2 token, JSON:API charging stations) plus
unauthenticated ``/_sim/`` control endpoints, on loopback only, from the standard library alone.
Faults (error statuses, hangs, broken bodies, schema drift, token loss, pages that shift under
the client) can be switched on and off while it runs, through ``/_sim/faults`` or
``Simulator.add_fault``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import enum
import hashlib
import json
import math
import random
import secrets
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import SplitResult, parse_qs, quote, quote_plus, unquote_plus, urlsplit

FIRMWARE_MIX: dict[str, float] = {"2.4.1": 0.6, "2.5.0": 0.3, "3.0.0-rc1": 0.1}

TOKEN_PATH = "/oauth2/token"
STATIONS_PATH = "/api/cpoapi/v1/charging_stations/"
CONTROL_PREFIX = "/_sim/"
JSON = "application/json"
JSON_API = "application/vnd.api+json"
HISTORY_LENGTH = 1000

# What each fault kind does to a matching request:
#   status              answer ``status`` with a JSON:API (stations) or OAuth2 (token) error body
#                       and ``Retry-After: retry_after`` when given
#   latency             wait ``seconds`` more, then answer normally
#   hang                answer nothing for ``seconds`` (30), then close; clear_faults/stop end it
#   disconnect          send headers with the full Content-Length, half the body, then close
#   truncated           the first half of the body with an honest Content-Length
#   html                a proxy's HTML error page, with 200 or ``status``
#   wrong_content_type  the normal body as text/plain
#   no_data, no_meta    the page without "data", or without "meta" and "links"
#   null_attributes     every row's "attributes" is null
#   wrong_types         attribute values are numbers, lists, objects, booleans; total a string
#   data_not_list       "data" is the page's first row (an object) instead of a list
#   revoke_token        revoke every token first (the request gets 401 on stations)
#   expire_token        expire every token first (401 as well; listed as expired, not revoked)
#   insert_rows         insert one station at the start of the inventory first
#   delete_rows         delete the inventory's first station first
#   total_drift         meta.pagination.total is one too many
#   duplicate_rows      the page's first row is the previous page's last one (not at offset 0)
#   drip                the normal answer, its body (or with ``part: headers`` its status line
#                       and headers) sent DRIP_BYTES at a time every ``seconds`` (1); a clear
#                       sends the rest at once
#   oversized           the normal answer padded to ``size`` bytes (50 MB) of valid JSON, with
#                       an honest Content-Length, streamed without being held in memory
# The kinds from no_data to data_not_list, total_drift and duplicate_rows change 200 pages
# only (a 401 stays a plain 401) and, like insert_rows and delete_rows, exist for stations only.
#   echo_secret         (token) 401 whose error and error_description echo the client secret
#                       plain, URL-encoded, JSON-escaped and in base64 of id:secret (plain and
#                       form-encoded, standard and URL-safe)
#   huge_error          (token) 400 with a 60 KB error_description holding the secret: far
#                       longer than a log line, yet under the exporter's 64 KiB token cap
#   expires_in_nan, expires_in_infinity, expires_in_1e400, expires_in_negative,
#   expires_in_string   (token) a valid token whose expires_in is NaN, Infinity, 1e400, -3600
#                       or "3600", sent as raw JSON text
#   redirect            ``status`` (307 unless given: 301, 302, 303, 307 or 308) to the same
#                       path and query at another origin: a second simulator on another port
#                       with the same client and a fleet of its own (3 stations) that it serves
#                       without a token; its GET /_sim/credentials counts the requests that
#                       carried the client secret there
#   surrogate_label     the page's last row's label ends in a lone surrogate (JSON "\ud800")
#   non_utf8_label      the page's last row's label ends in bytes that are not UTF-8
#   control_label       the page's last row's label holds CR and ESC (a forged log line)
#   long_label          the page's last row's label is LONG_LABEL_LENGTH characters longer
#   duplicate_station   the listing has the inventory's first station once more at its end,
#                       in every read, with a total that counts it (the API's own duplicate)
# These kinds too change 200 pages only and exist for stations only.
FAULT_KINDS: tuple[str, ...] = (
    "status",
    "latency",
    "hang",
    "disconnect",
    "truncated",
    "html",
    "wrong_content_type",
    "no_data",
    "no_meta",
    "null_attributes",
    "wrong_types",
    "data_not_list",
    "revoke_token",
    "expire_token",
    "insert_rows",
    "delete_rows",
    "total_drift",
    "duplicate_rows",
    "echo_secret",
    "huge_error",
    "expires_in_nan",
    "expires_in_infinity",
    "expires_in_1e400",
    "expires_in_negative",
    "expires_in_string",
    "redirect",
    "surrogate_label",
    "non_utf8_label",
    "control_label",
    "long_label",
    "duplicate_station",
    "drip",
    "oversized",
)
FAULT_ENDPOINTS = ("stations", "token")
# Kinds that reshape or shift a JSON:API page make no sense for the token endpoint.
STATIONS_ONLY_KINDS = frozenset(
    {
        "no_data",
        "no_meta",
        "null_attributes",
        "wrong_types",
        "data_not_list",
        "insert_rows",
        "delete_rows",
        "total_drift",
        "duplicate_rows",
        "surrogate_label",
        "non_utf8_label",
        "control_label",
        "long_label",
        "duplicate_station",
    }
)
EXPIRES_IN_TEXT = {
    "expires_in_nan": "NaN",
    "expires_in_infinity": "Infinity",
    "expires_in_1e400": "1e400",
    "expires_in_negative": "-3600",
    "expires_in_string": '"3600"',
}
TOKEN_ONLY_KINDS = frozenset({"echo_secret", "huge_error", *EXPIRES_IN_TEXT})
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
OTHER_ORIGIN_STATIONS = 3
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
DRIP_BYTES = 2
DRIP_PARTS = ("body", "headers")
OVERSIZED_BYTES = 50_000_000
MAX_OVERSIZED_BYTES = 2**30
PAD_CHUNK = 64 * 1024


def _version_key(version: str) -> tuple[tuple[int, ...], bool, str]:
    """Order versions like "2.4.1" < "3.0.0-rc1" < "3.0.0"."""
    release, _, pre = version.partition("-")
    numbers = tuple(int(part) if part.isdigit() else 0 for part in release.split("."))
    return numbers, not pre, pre


def _check_count(count: int) -> None:
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")


def _copy(station: dict[str, Any]) -> dict[str, Any]:
    attributes = {
        name: copy.deepcopy(value) if isinstance(value, dict | list) else value
        for name, value in station["attributes"].items()
    }
    return {**station, "attributes": attributes}


def fingerprint(pairs: Iterable[tuple[str, str]]) -> str:
    """The fleet's identity for snapshot checks: sha256 over the sorted "id<TAB>firmware" lines.

    A test computes the same from the exporter's metrics and looks it up in the history.
    """
    lines = sorted(f"{station_id}\t{firmware}" for station_id, firmware in pairs)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _firmware_text(station: dict[str, Any]) -> str:
    """firmwareVersion as text; a custom station may lack it ("") or hold a non-string (JSON)."""
    version = station["attributes"].get("firmwareVersion")
    if isinstance(version, str):
        return version
    return "" if version is None else json.dumps(version, sort_keys=True)


class _ChangeLock:
    """The inventory's re-entrant lock. When its outermost holder releases it after a change,
    the inventory records one fingerprint, so changes made under one hold are one entry."""

    def __init__(self, on_outermost_release: Callable[[], None]) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self._on_outermost_release = on_outermost_release

    def __enter__(self) -> _ChangeLock:
        self._lock.acquire()
        self._depth += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._depth -= 1
            if self._depth == 0:
                self._on_outermost_release()
        finally:
            self._lock.release()


class Inventory:
    """Thread-safe, deterministic (seeded) station inventory with a history of fingerprints."""

    def __init__(
        self, size: int = 25, firmware_mix: Mapping[str, float] | None = None, seed: int = 0
    ) -> None:
        mix = dict(FIRMWARE_MIX if firmware_mix is None else firmware_mix)
        if not mix or any(weight < 0 for weight in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError(f"firmware_mix needs non-negative weights with a positive sum: {mix}")
        self._mix = mix
        self._rng = random.Random(seed)
        self._lock = _ChangeLock(self._record_change)
        self._stations: list[dict[str, Any]] = []
        self._serial = 0
        self._changed = False
        self._history: deque[str] = deque(maxlen=HISTORY_LENGTH)
        with self._lock:
            self.add(size)
            self._changed = True  # creation is a change even with size 0

    def _record_change(self) -> None:
        if self._changed:
            self._changed = False
            self._history.append(fingerprint(self._pairs()))

    def _pairs(self) -> list[tuple[str, str]]:
        return [(station["id"], _firmware_text(station)) for station in self._stations]

    def _new_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _new_station(self) -> dict[str, Any]:
        rng = self._rng
        self._serial += 1
        firmware = rng.choices(list(self._mix), weights=list(self._mix.values()))[0]
        return {
            "type": "charging_stations",
            "id": self._new_id(),
            "attributes": {
                "label": f"Station {self._serial}",
                "chargeBoxIdentity": f"cp_{self._serial}",
                "iccid": f"8949{rng.randrange(10**15):015d}",
                "imsi": f"26201{rng.randrange(10**10):010d}",
                "serialnumber": f"SN{rng.randrange(10**8):08d}",
                "firmwareVersion": firmware,
            },
        }

    def add(self, count: int, *, at_start: bool = False) -> list[str]:
        """Add ``count`` stations drawn from the firmware mix (at the end, or before all others
        with ``at_start``, which shifts every row to a later page); return their ids."""
        _check_count(count)
        with self._lock:
            new = [self._new_station() for _ in range(count)]
            if at_start:
                self._stations[:0] = new
            else:
                self._stations.extend(new)
            self._changed |= bool(new)
            return [station["id"] for station in new]

    def add_custom(self, rows: list[dict[str, Any]]) -> list[str]:
        """Append stations exactly as given, for bad-input tests: each row is
        ``{"id": optional string, "attributes": {any JSON}}``; return their ids."""
        stations = _custom_stations(rows)
        with self._lock:
            for station in stations:
                station["id"] = station["id"] if station["id"] is not None else self._new_id()
            self._stations.extend(stations)
            self._changed |= bool(stations)
            return [station["id"] for station in stations]

    def remove(self, count: int) -> list[str]:
        """Remove up to ``count`` randomly chosen stations; return their ids."""
        _check_count(count)
        with self._lock:
            gone = self._rng.sample(self._stations, min(count, len(self._stations)))
            return self._drop(gone)

    def remove_first(self, count: int = 1) -> list[str]:
        """Remove up to ``count`` stations from the start, shifting every row to an earlier
        page; return their ids."""
        _check_count(count)
        with self._lock:
            return self._drop(self._stations[:count])

    def _drop(self, gone: list[dict[str, Any]]) -> list[str]:
        removed = {id(station) for station in gone}
        self._stations = [s for s in self._stations if id(s) not in removed]
        self._changed |= bool(gone)
        return [station["id"] for station in gone]

    def rollout(self, to_version: str, count: int, from_version: str | None = None) -> list[str]:
        """Move up to ``count`` stations (optionally only those on ``from_version``) to
        ``to_version``; return the ids whose firmwareVersion changed."""
        _check_count(count)
        with self._lock:
            candidates = [
                station
                for station in self._stations
                if station["attributes"].get("firmwareVersion") != to_version
                and from_version in (None, station["attributes"].get("firmwareVersion"))
            ]
            return self._move(candidates, count, to_version)

    def _move(self, candidates: list[dict[str, Any]], count: int, to_version: str) -> list[str]:
        chosen = self._rng.sample(candidates, min(count, len(candidates)))
        for station in chosen:
            station["attributes"]["firmwareVersion"] = to_version
        self._changed |= bool(chosen)
        return [station["id"] for station in chosen]

    def stations(self) -> list[dict[str, Any]]:
        """Copies of all JSON:API resource objects, in inventory order."""
        with self._lock:
            return [_copy(station) for station in self._stations]

    def page(self, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """One consistent slice of the inventory and the total at that moment."""
        with self._lock:
            rows = self._stations[offset : offset + limit]
            return [_copy(station) for station in rows], len(self._stations)

    @property
    def lock(self) -> _ChangeLock:
        """Hold it to make several changes appear to readers (and in the history) as one."""
        return self._lock

    def firmware_counts(self) -> dict[str, int]:
        """Number of stations per firmware version (as text, see ``fingerprint``)."""
        with self._lock:
            return dict(Counter(_firmware_text(station) for station in self._stations))

    def fingerprint(self) -> str:
        """The current fleet's fingerprint (see the module-level ``fingerprint``)."""
        with self._lock:
            return fingerprint(self._pairs())

    def history(self) -> list[str]:
        """Fingerprints after creation and after every change since, oldest first; the last
        ``HISTORY_LENGTH`` only."""
        with self._lock:
            return list(self._history)

    def __len__(self) -> int:
        with self._lock:
            return len(self._stations)

    def churn_step(self) -> None:
        """A small random change for the demo: add 0-2, remove 0-1, roll 1-3 stations forward."""
        with self._lock:
            self.add(self._rng.randint(0, 2))
            self.remove(self._rng.randint(0, 1))
            versions = sorted(self._mix, key=_version_key)
            if len(versions) < 2:
                return
            target = self._rng.choice(versions[1:])
            older = [
                station
                for station in self._stations
                if isinstance(version := station["attributes"].get("firmwareVersion"), str)
                and _version_key(version) < _version_key(target)
            ]
            self._move(older, self._rng.randint(1, 3), target)


def _custom_stations(rows: object) -> list[dict[str, Any]]:
    if not isinstance(rows, list):
        raise ValueError(f"stations must be a list of objects, got {rows!r}")
    return [_custom_station(row, index) for index, row in enumerate(rows)]


def _custom_station(row: object, index: int) -> dict[str, Any]:
    """A validated deep copy of one custom row; its id stays None until the inventory picks one."""
    where = f"stations[{index}]"
    if not isinstance(row, dict):
        raise ValueError(f"{where} must be an object with attributes and an optional id")
    unknown = sorted(set(row) - {"id", "attributes"})
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; allowed are id and attributes")
    station_id = row.get("id")
    if station_id is not None and not isinstance(station_id, str):
        raise ValueError(f"{where}.id must be a string (JSON:API ids are), got {station_id!r}")
    attributes = row.get("attributes")
    if not isinstance(attributes, dict):
        raise ValueError(f"{where}.attributes must be an object, got {attributes!r}")
    try:
        attributes = json.loads(json.dumps(attributes, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}.attributes must be plain JSON: {exc}") from exc
    return {"type": "charging_stations", "id": station_id, "attributes": attributes}


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
    """One fault to inject into requests to ``endpoint``; what each kind does is listed above
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

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {', '.join(FAULT_KINDS)}")
        if self.endpoint not in FAULT_ENDPOINTS:
            raise ValueError(f"endpoint must be 'stations' or 'token', got {self.endpoint!r}")
        if self.endpoint == "token" and self.kind in STATIONS_ONLY_KINDS:
            raise ValueError(f"a {self.kind} fault works on the stations endpoint only")
        if self.endpoint == "stations" and self.kind in TOKEN_ONLY_KINDS:
            raise ValueError(f"a {self.kind} fault works on the token endpoint only")
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


@dataclass(slots=True)
class _ActiveFault:
    id: int
    fault: Fault
    after_left: int
    times_left: int | None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            **asdict(self.fault),
            "remaining_after": self.after_left,
            "remaining_times": self.times_left,
        }


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One API request as the simulator saw it (no headers, so no tokens). Status 0: the
    connection was closed without a response (a hang fault)."""

    method: str
    path: str
    status: int


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    headers: Message
    body: bytes


class _Ending(enum.Enum):
    """How the handler ends a response: normally, or as a fault breaks the connection."""

    COMPLETE = "complete"
    HALF_BODY = "send half of the body, then close"
    NO_RESPONSE = "close without a response"


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: Any  # a JSON value, or bytes sent as they are
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()
    ending: _Ending = _Ending.COMPLETE
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


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    return (data[start : start + size] for start in range(0, len(data), size))


def _padded(payload: bytes, size: int) -> tuple[int, Iterator[bytes]]:
    """A JSON object ``payload`` with a "padding" member in front that makes it ``size``
    bytes long (or as short as it can be): its length and its pieces, made as they are sent."""
    prefix, suffix = b'{"padding":"', b'",' + payload[1:]
    fill = max(0, size - len(prefix) - len(suffix))

    def pieces() -> Iterator[bytes]:
        yield prefix
        chunk = b"x" * PAD_CHUNK
        for _ in range(fill // PAD_CHUNK):
            yield chunk
        yield chunk[: fill % PAD_CHUNK]
        yield suffix

    return len(prefix) + fill + len(suffix), pieces()


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _api_error(status: int, title: str, detail: str | None = None) -> _Response:
    error = {"status": str(status), "title": title}
    if detail:
        error["detail"] = detail
    return _Response(status, {"errors": [error]}, JSON_API)


def _oauth_error(status: int) -> str:
    """The RFC 6749 error code a token endpoint would send with ``status``."""
    if status in (400, 401):
        return "invalid_client"
    if status == 403:
        return "unauthorized_client"
    if status == 429 or status >= 500:
        return "temporarily_unavailable"
    return "invalid_request"


def _status_response(endpoint: str, fault: Fault) -> _Response:
    status = fault.status
    assert status is not None  # Fault checks it for kind "status"
    headers = () if fault.retry_after is None else (("Retry-After", fault.retry_after),)
    if endpoint == "token":
        return _Response(status, {"error": _oauth_error(status)}, JSON, headers)
    return replace(_api_error(status, _phrase(status)), headers=headers)


def _html_response(status: int | None) -> _Response:
    """A proxy's error page; served with 200 it still says 502, as captive portals do."""
    status = status or 200
    shown = status if status >= 400 else 502
    page = f"<html><body><h1>{shown} {_phrase(shown)}</h1></body></html>"
    return _Response(status, page.encode(), "text/html")


def _echo_secret_response(kind: str, client: tuple[str, str]) -> _Response:
    """A token endpoint error that echoes the client secret: in every form a careless server
    might (echo_secret), or inside 60 KB of text (huge_error)."""
    client_id, secret = client
    if kind == "huge_error":
        filler = "A" * HUGE_ERROR_LENGTH
        description = f"secret {secret} refused {filler} {secret}"
        return _Response(400, {"error": "invalid_request", "error_description": description})
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
    return _Response(401, {"error": f"invalid_client {secret}", "error_description": description})


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
    elif kind in _LABEL_SUFFIXES and rows:
        attributes = rows[-1]["attributes"]
        attributes["label"] = f"{attributes.get('label') or ''}{_LABEL_SUFFIXES[kind]}"


def _first(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def _page_param(query: dict[str, list[str]], name: str, default: int, minimum: int) -> int:
    value = _first(query, name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _count_field(body: dict[str, Any], name: str) -> int:
    value = body.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


_ENDPOINTS = {("POST", TOKEN_PATH): "token", ("GET", STATIONS_PATH.rstrip("/")): "stations"}


class Simulator:
    """Serves the CPO API double over HTTP on loopback in a daemon thread."""

    def __init__(
        self,
        inventory: Inventory,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        client_id: str = "demo-client",
        client_secret: str = "demo-secret",
        token_ttl: float = 3600.0,
        max_page_limit: int = 100,
        default_page_limit: int = 10,
        latency: float = 0.0,
        quickstart_next_links: bool = False,
        churn_interval: float | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """With ``tls_cert_file`` and ``tls_key_file`` (PEM) it serves HTTPS, e.g. with a
        certificate of a private CA that the client does not trust by default."""
        if max_page_limit < 1 or default_page_limit < 1:
            raise ValueError("max_page_limit and default_page_limit must be >= 1")
        self.inventory = inventory
        self.latency = latency
        self._address = (host, port)
        self._client = (client_id, client_secret)
        self._token_ttl = token_ttl
        self._max_page_limit = max_page_limit
        self._default_page_limit = default_page_limit
        self._quickstart_next_links = quickstart_next_links
        self._churn_interval = churn_interval
        self._clock = clock
        self._tls: ssl.SSLContext | None = None
        if tls_cert_file or tls_key_file:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(tls_cert_file or "", tls_key_file)
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}
        self._issued: list[str] = []
        self._requests: list[RequestRecord] = []
        self._faults: list[_ActiveFault] = []
        self._last_fault_id = 0
        # Set to end the current hangs and latency faults; replaced by a fresh one on clear.
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._secret_received = 0
        self._other: Simulator | None = None  # the other origin of redirect faults
        self._open = False  # serve stations without a token (the other origin does)

    def start(self) -> Simulator:
        """Bind (port 0 picks a free port) and serve in daemon threads; return self."""
        self._server = _Server(self._address, self)
        if self._tls is not None:
            # The handshake runs in the connection's thread, on the first read.
            self._server.socket = self._tls.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._threads = [
            threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="simulator-http",
                daemon=True,
            )
        ]
        if self._churn_interval is not None:
            self._threads.append(
                threading.Thread(
                    target=self._churn,
                    args=(self._churn_interval,),
                    name="simulator-churn",
                    daemon=True,
                )
            )
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end hangs, drop open connections and end the churn thread, in bounded
        time."""
        with self._lock:
            self._stopping.set()
            self._wake.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
        for thread in self._threads:
            thread.join(timeout=5)
        with self._lock:
            other, self._other = self._other, None
        if other is not None:
            other.stop()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def api_url(self) -> str:
        """The mandant base URL, e.g. ``http://127.0.0.1:PORT``."""
        if self._server is None:
            raise RuntimeError("the simulator has no address before start()")
        host, port = self._server.server_address[:2]
        return f"{'https' if self._tls else 'http'}://{host}:{port}"

    @property
    def token_url(self) -> str:
        return self.api_url + TOKEN_PATH

    @property
    def tokens_issued(self) -> int:
        with self._lock:
            return len(self._issued)

    @property
    def tokens(self) -> dict[str, list[str]]:
        """Every access token issued, in order, and which of them are valid, expired (by TTL
        or an expire_token fault) or revoked (by revoke_tokens or a revoke_token fault)."""
        with self._lock:
            now = self._clock()
            issued = list(self._issued)
            expiries = dict(self._tokens)
        return {
            "issued": issued,
            "valid": [token for token in issued if now < expiries.get(token, -math.inf)],
            "expired": [token for token in issued if now >= expiries.get(token, math.inf)],
            "revoked": [token for token in issued if token not in expiries],
        }

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the log of API requests (control requests are not logged)."""
        with self._lock:
            return list(self._requests)

    def other_origin(self) -> str:
        """The URL of the other origin of redirect faults: a second simulator with the same
        client, a fleet of its own and stations served without a token; started on first use."""
        with self._lock:
            if self._other is None:
                host = self._address[0]
                other = Simulator(
                    Inventory(size=OTHER_ORIGIN_STATIONS, seed=1 + id(self) % 1000),
                    host=host,
                    client_id=self._client[0],
                    client_secret=self._client[1],
                )
                other._open = True
                self._other = other.start()
            return self._other.api_url

    def revoke_tokens(self) -> int:
        """Invalidate every token issued so far; return how many there were."""
        with self._lock:
            revoked = len(self._tokens)
            self._tokens.clear()
            return revoked

    def expire_tokens(self) -> int:
        """Make every unexpired token expire now; return how many there were."""
        with self._lock:
            now = self._clock()
            live = [token for token, expiry in self._tokens.items() if now < expiry]
            self._tokens.update(dict.fromkeys(live, now))
            return len(live)

    def add_fault(self, fault: Fault) -> int:
        """Switch ``fault`` on (after any already active); return its id."""
        with self._lock:
            self._last_fault_id += 1
            self._faults.append(_ActiveFault(self._last_fault_id, fault, fault.after, fault.times))
            return self._last_fault_id

    def clear_faults(self) -> None:
        """Switch every fault off and end the hangs and latency faults now in progress."""
        self._clear_faults()

    def _clear_faults(self) -> int:
        with self._lock:
            cleared = len(self._faults)
            self._faults.clear()
            wake, self._wake = self._wake, threading.Event()
            if self._stopping.is_set():
                self._wake.set()
        wake.set()
        return cleared

    @property
    def faults(self) -> list[dict[str, Any]]:
        """The active faults: id, the Fault fields, remaining_after and remaining_times."""
        with self._lock:
            return [active.describe() for active in self._faults]

    def _take_fault(self, endpoint: str) -> tuple[Fault | None, threading.Event]:
        """The fault for one request to ``endpoint`` (the first active one whose ``after`` is
        used up) and the event that ends its wait. Every active fault for the endpoint that is
        still in its ``after`` phase counts the request, whichever fault applies."""
        with self._lock:
            chosen: _ActiveFault | None = None
            for active in self._faults:
                if active.fault.endpoint != endpoint:
                    continue
                if active.after_left > 0:
                    active.after_left -= 1
                elif chosen is None:
                    chosen = active
            if chosen is None:
                return None, self._wake
            if chosen.times_left is not None:
                chosen.times_left -= 1
                if chosen.times_left == 0:
                    self._faults.remove(chosen)
            return chosen.fault, self._wake

    def _churn(self, interval: float) -> None:
        while not self._stopping.wait(interval):
            self.inventory.churn_step()

    def _respond(self, request: _Request) -> _Response:
        """The one place every request passes through (and where per-request hooks belong)."""
        url = urlsplit(request.path)
        if url.path.startswith(CONTROL_PREFIX):
            return self._control(request.method, url.path, request.body)
        if self.latency > 0:
            time.sleep(self.latency)
        endpoint = _ENDPOINTS.get((request.method, url.path.rstrip("/")))
        if endpoint is None:
            response = _api_error(404, "Not Found")
        else:
            fault, wake = self._take_fault(endpoint)
            response = self._serve(endpoint, request, url, fault, wake)
        with self._lock:
            self._requests.append(RequestRecord(request.method, request.path, response.status))
        return response

    def _serve(
        self,
        endpoint: str,
        request: _Request,
        url: SplitResult,
        fault: Fault | None,
        wake: threading.Event,
    ) -> _Response:
        """Answer one API request, with ``fault`` (if any) applied around the normal answer."""
        if fault is None:
            return self._answer(endpoint, request, url, None)
        kind = fault.kind
        if kind == "status":
            return _status_response(endpoint, fault)
        if kind == "redirect":
            location = self.other_origin() + request.path
            return _Response(fault.status or 307, b"", headers=(("Location", location),))
        if kind in ("echo_secret", "huge_error"):
            return _echo_secret_response(kind, self._client)
        if kind == "html":
            return _html_response(fault.status)
        if kind in ("hang", "latency"):
            wake.wait(HANG_SECONDS if fault.seconds is None else fault.seconds)
            if kind == "hang":
                return _Response(0, b"", ending=_Ending.NO_RESPONSE)
        elif kind == "revoke_token":
            self.revoke_tokens()
        elif kind == "expire_token":
            self.expire_tokens()
        elif kind == "insert_rows":
            self.inventory.add(1, at_start=True)
        elif kind == "delete_rows":
            self.inventory.remove_first(1)
        response = self._answer(endpoint, request, url, kind)
        if kind in EXPIRES_IN_TEXT and response.status == 200:
            marker = '"expires_in: raw"'
            text = json.dumps(response.body | {"expires_in": "expires_in: raw"})
            return replace(response, body=text.replace(marker, EXPIRES_IN_TEXT[kind]).encode())
        if kind == "disconnect":
            return replace(response, ending=_Ending.HALF_BODY)
        if kind == "truncated":
            payload = response.payload
            return replace(response, body=payload[: len(payload) // 2])
        if kind == "wrong_content_type":
            return replace(response, content_type="text/plain")
        if kind == "drip":
            pause = DRIP_SECONDS if fault.seconds is None else fault.seconds
            return replace(response, pause=pause, drip_head=fault.part == "headers", wake=wake)
        if kind == "oversized":
            return replace(response, padding=fault.size or OVERSIZED_BYTES)
        return response

    def _answer(
        self, endpoint: str, request: _Request, url: SplitResult, kind: str | None
    ) -> _Response:
        """The normal answer; a document fault ``kind`` reshapes a stations page."""
        if endpoint == "token":
            return self._token(request, url)
        return self._stations(request, url, kind)

    def _token(self, request: _Request, url: SplitResult) -> _Response:
        params = parse_qs(url.query)
        if request.headers.get_content_type() == "application/x-www-form-urlencoded":
            params |= parse_qs(request.body.decode("utf-8", "replace"))
        if not self._client_matches(request.headers.get("Authorization", ""), params):
            return _Response(401, {"error": "invalid_client"})
        with self._lock:
            self._secret_received += 1
        if _first(params, "grant_type") != "client_credentials":
            return _Response(400, {"error": "unsupported_grant_type"})
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = self._clock() + self._token_ttl
            self._issued.append(token)
        body = {
            "access_token": token,
            "expires_in": math.ceil(self._token_ttl),
            "token_type": "Bearer",
        }
        return _Response(200, body)

    def _client_matches(self, authorization: str, params: dict[str, list[str]]) -> bool:
        """HTTP Basic (form-encoded per RFC 6749 2.3.1, or plain) wins over form/query fields."""
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            return (_first(params, "client_id"), _first(params, "client_secret")) == self._client
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except ValueError:
            return False
        client_id, _, secret = decoded.partition(":")
        return self._client in (
            (client_id, secret),
            (unquote_plus(client_id), unquote_plus(secret)),
        )

    def _authorized(self, authorization: str) -> bool:
        """Accept ``Bearer <token>`` and, as the quickstart's curl shows, the bare token."""
        scheme, _, rest = authorization.strip().partition(" ")
        token = rest.strip() if scheme.lower() == "bearer" else authorization.strip()
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and self._clock() < expiry

    def _stations(self, request: _Request, url: SplitResult, kind: str | None) -> _Response:
        if not self._open and not self._authorized(request.headers.get("Authorization", "")):
            return _api_error(401, "Unauthorized")
        query = parse_qs(url.query, keep_blank_values=True)
        try:
            limit = _page_param(query, "page[limit]", self._default_page_limit, minimum=1)
            offset = _page_param(query, "page[offset]", 0, minimum=0)
        except ValueError as exc:
            return _api_error(400, "Bad Request", str(exc))
        limit = min(limit, self._max_page_limit)
        if kind == "duplicate_station":
            listing = self.inventory.stations()  # one consistent view, as page() gives
            listing += listing[:1]
            rows, total = listing[offset : offset + limit], len(listing)
        else:
            # duplicate_rows reads one row more, the previous page's last, in the same slice.
            start = offset - 1 if kind == "duplicate_rows" and offset > 0 else offset
            window, total = self.inventory.page(start, limit + offset - start)
            rows = window[offset - start :]
            if start < offset and rows:
                rows[0] = window[0]
        last_page = offset + limit >= total
        links = {"current": self._page_url(limit, offset)}
        if not last_page:
            # The quickstart's sample links offset 10 after a page of limit 1.
            step = 10 * limit if self._quickstart_next_links else limit
            links["next"] = self._page_url(limit, offset + step)
        pagination = {"total": total, "offset": offset, "limit": limit, "lastPage": last_page}
        document = {"data": rows, "meta": {"pagination": pagination}, "links": links}
        if kind is not None:
            _reshape(document, kind)
        if kind == "non_utf8_label":
            body = json.dumps(document).encode().replace(_NOT_UTF8_MARKER.encode(), _NOT_UTF8)
            return _Response(200, body, JSON_API)
        return _Response(200, document, JSON_API)

    def _page_url(self, limit: int, offset: int) -> str:
        return f"{self.api_url}{STATIONS_PATH}?page%5Blimit%5D={limit}&page%5Boffset%5D={offset}"

    def _control(self, method: str, path: str, raw_body: bytes) -> _Response:
        try:
            body = json.loads(raw_body or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the request body must be a JSON object")
            action = path.removeprefix(CONTROL_PREFIX).rstrip("/")
            return self._control_action(method, action, body)
        except ValueError as exc:
            return _Response(400, {"error": str(exc)})

    def _control_action(self, method: str, action: str, body: dict[str, Any]) -> _Response:
        if (method, action) == ("GET", "state"):
            with self._lock:
                tokens_issued, requests = len(self._issued), len(self._requests)
            state = {
                "stations": len(self.inventory),
                "tokens_issued": tokens_issued,
                "firmware": self.inventory.firmware_counts(),
                "requests": requests,
            }
            return _Response(200, state)
        if (method, action) == ("GET", "requests"):
            return _Response(200, [asdict(record) for record in self.requests])
        if (method, action) == ("GET", "tokens"):
            return _Response(200, self.tokens)
        if (method, action) == ("GET", "history"):
            return _Response(200, {"fingerprints": self.inventory.history()})
        if (method, action) == ("GET", "credentials"):
            with self._lock:
                other = self._other.api_url if self._other else None
                return _Response(
                    200, {"secret_received": self._secret_received, "other_origin": other}
                )
        if (method, action) == ("POST", "client_secret"):
            secret = body.get("client_secret")
            if not isinstance(secret, str) or not secret:
                raise ValueError("client_secret must be a non-empty string")
            with self._lock:
                self._client = (self._client[0], secret)
            return _Response(200, {"rotated": True})
        if (method, action) == ("POST", "revoke_tokens"):
            return _Response(200, {"revoked": self.revoke_tokens()})
        if (method, action) == ("POST", "latency"):
            seconds = body.get("seconds")
            if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
                raise ValueError(f"seconds must be a number >= 0, got {seconds!r}")
            self.latency = float(seconds)
            return _Response(200, {"latency": self.latency})
        if (method, action) == ("POST", "inventory"):
            return _Response(200, self._change_inventory(body))
        if (method, action) == ("GET", "faults"):
            return _Response(200, {"faults": self.faults})
        if (method, action) == ("POST", "faults"):
            return _Response(200, {"id": self.add_fault(Fault.from_json(body))})
        if (method, action) in (("DELETE", "faults"), ("POST", "faults/clear")):
            return _Response(200, {"cleared": self._clear_faults()})
        return _Response(404, {"error": f"no control endpoint {method} {CONTROL_PREFIX}{action}"})

    def _change_inventory(self, body: dict[str, Any]) -> dict[str, list[str]]:
        rollout = body.get("rollout") or {}
        if not isinstance(rollout, dict):
            raise ValueError("rollout must be an object with to, count and optional from")
        to_version, from_version = rollout.get("to"), rollout.get("from")
        if rollout and not isinstance(to_version, str):
            raise ValueError(f"rollout.to must be a version string, got {to_version!r}")
        if from_version is not None and not isinstance(from_version, str):
            raise ValueError(f"rollout.from must be a version string or null, got {from_version!r}")
        add, remove = _count_field(body, "add"), _count_field(body, "remove")
        count = _count_field(rollout, "count")
        stations = body.get("stations", [])
        _custom_stations(stations)  # checked before anything changes
        with self.inventory.lock:  # clients see all of the change or none of it
            added = self.inventory.add(add)
            removed = self.inventory.remove(remove)
            rolled_out = self.inventory.rollout(to_version, count, from_version) if rollout else []
            added += self.inventory.add_custom(stations)
        return {"added": added, "removed": removed, "rolled_out": rolled_out}


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its Simulator and can drop keep-alive connections."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], simulator: Simulator) -> None:
        self.simulator = simulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can stall for seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that refuses our TLS certificate is a test case, not a traceback."""
        if not isinstance(sys.exc_info()[1], ssl.SSLError | ConnectionError):
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Wake handler threads waiting on idle keep-alive connections so they end."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its handler thread
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """Translates HTTP to and from Simulator._respond; logs nothing (tokens, secrets)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; no 40 ms stalls
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        response = self.server.simulator._respond(
            _Request(self.command, self.path, self.headers, body)
        )
        if response.ending is _Ending.NO_RESPONSE:
            self.close_connection = True
            return
        if response.streamed:
            self._stream(response)
            return
        payload = response.payload
        sent = payload
        if response.ending is _Ending.HALF_BODY:
            sent = payload[: len(payload) // 2]
            self.close_connection = True
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in response.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(sent)
        except ConnectionError:  # the client gave up (e.g. its timeout was shorter than latency)
            self.close_connection = True

    def _stream(self, response: _Response) -> None:
        """Send a drip or oversized answer piece by piece."""
        payload = response.payload
        if response.padding:
            length, body = _padded(payload, response.padding)
        else:
            length, body = len(payload), iter((payload,))
        lines = [
            f"HTTP/1.1 {response.status} {_phrase(response.status)}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {length}",
            *(f"{name}: {value}" for name, value in response.headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            if response.drip_head:
                self._drip(head, response)
            else:
                self.wfile.write(head)
            if response.pause and not response.drip_head:
                self._drip(payload, response)
            else:
                for piece in body:
                    self.wfile.write(piece)
        except ConnectionError:  # the client gave up on the drip or the oversized body
            self.close_connection = True

    def _drip(self, data: bytes, response: _Response) -> None:
        wake = response.wake or threading.Event()
        for piece in _pieces(data, DRIP_BYTES):
            self.wfile.write(piece)
            wake.wait(response.pause)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log: it would show query strings with secrets."""


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGTERM or SIGINT; print its URL on one stdout line first."""
    parser = argparse.ArgumentParser(
        prog="python -m exporter.simulator", description="A be.ENERGISED CPO API double."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--stations", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-page-limit", type=int, default=100)
    parser.add_argument("--default-page-limit", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per API request")
    parser.add_argument("--token-ttl", type=float, default=3600.0, help="seconds")
    parser.add_argument("--client-id", default="demo-client")
    parser.add_argument("--client-secret", default="demo-secret", help="a test double's secret")
    parser.add_argument("--quickstart-next-links", action="store_true")
    parser.add_argument("--churn-interval", type=float, default=None, help="seconds")
    parser.add_argument("--tls-cert-file", help="serve HTTPS with this PEM certificate (chain)")
    parser.add_argument("--tls-key-file", help="the PEM private key of --tls-cert-file")
    args = parser.parse_args(argv)

    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    simulator = Simulator(
        Inventory(size=args.stations, seed=args.seed),
        host=args.host,
        port=args.port,
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_ttl=args.token_ttl,
        max_page_limit=args.max_page_limit,
        default_page_limit=args.default_page_limit,
        latency=args.latency,
        quickstart_next_links=args.quickstart_next_links,
        churn_interval=args.churn_interval,
        tls_cert_file=args.tls_cert_file,
        tls_key_file=args.tls_key_file,
    )
    with simulator:
        print(f"simulator listening on {simulator.api_url}", flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
