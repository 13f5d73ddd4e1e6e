"""The kinds of fault the simulator injects, one small type each: what a kind does to the
answer, the listing or the page, the endpoints it exists for and the parameters it takes
(with their checks). The table that names every kind, and the ``Fault`` that a test switches
on, are in ``faults``."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol
from urllib.parse import quote, quote_plus

from exporter.simulator.inventory import Inventory
from exporter.simulator.wire import JSON, Ending, Request, Response, api_error, phrase

STATIONS = ("stations",)
TOKEN = ("token",)
FAULT_ENDPOINTS = ("stations", "token")
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
HUGE_ERROR_LENGTH = 60_000
HANG_SECONDS = 30.0
MAX_FAULT_SECONDS = 3600.0
LONG_LABEL_LENGTH = 100_000
CONTROL_LABEL_SUFFIX = "\r\x1b[2Klevel=error msg=forged"
"""What control_label appends: a carriage return and an ANSI escape that, written raw to a
terminal, erase the real log line and show a forged one."""
_NOT_UTF8 = b" M\xfcnchen \xff"  # Latin-1 text and a byte that starts no UTF-8 character
DRIP_SECONDS = 1.0
DRIP_PARTS = ("body", "headers")
OVERSIZED_BYTES = 50_000_000
MAX_OVERSIZED_BYTES = 2**30
MAX_ENDLESS_ROWS = 100_000
ENDLESS_ID_BASE = 0xE0D1E55 << 96
"""The UUID (as an integer) of an endless listing's station at offset 0; offset n is n more,
and in the new_fleet listing of read r, n + r * 2**40."""

Rows = tuple[list[dict[str, Any]], int]
"""One page of stations and the listing's total."""


# The parameters a kind takes, and their checks


Check = Callable[[str, object, str], None]
"""Raises ValueError unless a value (of the parameter named, for the kind named) is valid."""


@dataclass(frozen=True, slots=True)
class Param:
    """A parameter that a kind takes: its name (a field of Fault), its check, and whether a
    fault of the kind must give it."""

    name: str
    check: Check
    required: bool = False


def check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    """Raise ValueError unless ``value`` is an integer from ``minimum`` (to ``maximum``)."""
    in_range = (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= minimum
        and (maximum is None or value <= maximum)
    )
    if not in_range:
        bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise ValueError(f"{name} must be an integer {bounds}, got {value!r}")


def _integer(minimum: int, maximum: int) -> Check:
    def check(name: str, value: object, kind: str) -> None:
        check_int(name, value, minimum, maximum)

    return check


def _one_of(*options: object) -> Check:
    def check(name: str, value: object, kind: str) -> None:
        if not any(type(value) is type(option) and value == option for option in options):
            raise ValueError(f"{name} of a {kind} fault must be one of {options}, got {value!r}")

    return check


def _seconds(name: str, value: object, kind: str) -> None:
    if not (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and 0 <= value <= MAX_FAULT_SECONDS
    ):
        raise ValueError(
            f"{name} for a {kind} fault must be a number from 0 to {MAX_FAULT_SECONDS:g}, "
            f"got {value!r}"
        )


def _header_value(name: str, value: object, kind: str) -> None:
    if not (isinstance(value, str) and value.strip() and value.isascii() and value.isprintable()):
        raise ValueError(
            f"{name} must be a header value such as '1' or 'Wed, 21 Oct 2015 07:28:00 GMT', "
            f"got {value!r}"
        )


# What a kind acts on


class Parameters(Protocol):
    """The parameters a fault gives its kind: a Fault, as this module sees it."""

    @property
    def status(self) -> int | None: ...

    @property
    def retry_after(self) -> str | None: ...

    @property
    def seconds(self) -> float | None: ...

    @property
    def part(self) -> str | None: ...

    @property
    def size(self) -> int | None: ...

    @property
    def per_page(self) -> int | None: ...


class Target(Protocol):
    """What a kind acts on: the Simulator, as this module sees it without importing it."""

    @property
    def inventory(self) -> Inventory: ...

    @property
    def client(self) -> tuple[str, str]: ...

    def revoke_tokens(self) -> int: ...

    def expire_tokens(self) -> int: ...

    def other_origin(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Call:
    """One request that a fault applies to: the simulator that answers it, the endpoint, the
    request, the normal answer (listed and shaped by the fault) and the event that ends the
    fault's waits early (a clear or a stop sets it)."""

    target: Target
    endpoint: str
    request: Request
    answer: Callable[[], Response]
    wake: threading.Event


# The kinds. Each changes one step of the answer and leaves the others as they are.


@dataclass(frozen=True, slots=True)
class FaultKind:
    """A kind of fault: what it does to a matching request (``does``), the endpoints it exists
    for and the parameters it takes. This base changes nothing; a kind overrides the step it
    changes: the answer (``respond``), the listing (``rows``) or the page (``page``)."""

    does: str
    endpoints: ClassVar[tuple[str, ...]] = FAULT_ENDPOINTS
    takes: ClassVar[tuple[Param, ...]] = ()

    def param(self, name: str) -> Param | None:
        """The parameter ``name`` if this kind takes it."""
        return next((param for param in self.takes if param.name == name), None)

    def respond(self, fault: Parameters, call: Call) -> Response:
        """The answer to ``call``: the normal one."""
        return call.answer()

    def rows(
        self, fault: Parameters, inventory: Inventory, offset: int, limit: int, read: int
    ) -> Rows:
        """The stations page at ``offset`` in the ``read``-th read of the listing."""
        return inventory.page(offset, limit)

    def page(self, document: dict[str, Any]) -> Any:
        """The stations page as sent: the document, or bytes."""
        return document


class Status(FaultKind):
    """An error status with the body its endpoint sends."""

    takes = (
        Param("status", _integer(400, 599), required=True),
        Param("retry_after", _header_value),
    )

    def respond(self, fault: Parameters, call: Call) -> Response:
        status = fault.status
        assert status is not None  # a required parameter
        headers = () if fault.retry_after is None else (("Retry-After", fault.retry_after),)
        if call.endpoint == "token":
            return Response(status, {"error": _oauth_error(status)}, JSON, headers)
        return replace(api_error(status, phrase(status)), headers=headers)


class Html(FaultKind):
    """A proxy's error page; served with 200 it still says 502, as captive portals do."""

    takes = (Param("status", _integer(200, 599)),)

    def respond(self, fault: Parameters, call: Call) -> Response:
        status = fault.status or 200
        shown = status if status >= 400 else 502
        page = f"<html><body><h1>{shown} {phrase(shown)}</h1></body></html>"
        return Response(status, page.encode(), "text/html")


class Redirect(FaultKind):
    """A redirect to the same path at the simulator's other origin."""

    takes = (Param("status", _one_of(*REDIRECT_STATUSES)),)

    def respond(self, fault: Parameters, call: Call) -> Response:
        location = call.target.other_origin() + call.request.path
        return Response(fault.status or 307, b"", headers=(("Location", location),))


class EchoSecret(FaultKind):
    """A token error that echoes the client secret in every form a careless server might."""

    endpoints = TOKEN

    def respond(self, fault: Parameters, call: Call) -> Response:
        client_id, secret = call.target.client
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
        body = {"error": f"invalid_client {secret}", "error_description": description}
        return Response(401, body)


class HugeError(FaultKind):
    """A token error that holds the client secret inside 60 KB of text."""

    endpoints = TOKEN

    def respond(self, fault: Parameters, call: Call) -> Response:
        secret = call.target.client[1]
        description = f"secret {secret} refused {'A' * HUGE_ERROR_LENGTH} {secret}"
        return Response(400, {"error": "invalid_request", "error_description": description})


class Hang(FaultKind):
    """No answer: a wait, then the connection closed."""

    takes = (Param("seconds", _seconds),)

    def respond(self, fault: Parameters, call: Call) -> Response:
        call.wake.wait(HANG_SECONDS if fault.seconds is None else fault.seconds)
        return Response(0, b"", ending=Ending.NO_RESPONSE)


class Latency(FaultKind):
    """A wait, then the normal answer."""

    takes = (Param("seconds", _seconds, required=True),)

    def respond(self, fault: Parameters, call: Call) -> Response:
        assert fault.seconds is not None  # a required parameter
        call.wake.wait(fault.seconds)
        return call.answer()


@dataclass(frozen=True, slots=True)
class ActFirst(FaultKind):
    """``act`` on the simulator, then the normal answer."""

    act: Callable[[Target], object]

    def respond(self, fault: Parameters, call: Call) -> Response:
        self.act(call.target)
        return call.answer()


class ChangeFleetFirst(ActFirst):
    """A change of the fleet, then the normal answer (the stations endpoint's)."""

    endpoints = STATIONS


@dataclass(frozen=True, slots=True)
class Alter(FaultKind):
    """The normal answer, altered by ``alter``."""

    alter: Callable[[Response], Response]

    def respond(self, fault: Parameters, call: Call) -> Response:
        return self.alter(call.answer())


@dataclass(frozen=True, slots=True)
class ExpiresIn(FaultKind):
    """A valid token whose expires_in is the raw JSON ``text``."""

    endpoints = TOKEN
    text: str

    def respond(self, fault: Parameters, call: Call) -> Response:
        response = call.answer()
        if response.status != 200:
            return response
        marker = '"expires_in: raw"'
        text = json.dumps(response.body | {"expires_in": "expires_in: raw"})
        return replace(response, body=text.replace(marker, self.text).encode())


class Drip(FaultKind):
    """The normal answer, sent a few bytes at a time."""

    takes = (Param("seconds", _seconds), Param("part", _one_of(*DRIP_PARTS)))

    def respond(self, fault: Parameters, call: Call) -> Response:
        pause = DRIP_SECONDS if fault.seconds is None else fault.seconds
        return replace(
            call.answer(), pause=pause, drip_head=fault.part == "headers", wake=call.wake
        )


class Oversized(FaultKind):
    """The normal answer, padded with valid JSON."""

    takes = (Param("size", _integer(1, MAX_OVERSIZED_BYTES)),)

    def respond(self, fault: Parameters, call: Call) -> Response:
        return replace(call.answer(), padding=fault.size or OVERSIZED_BYTES)


class SkipRow(FaultKind):
    """A page not at offset 0 starts one row late."""

    endpoints = STATIONS

    def rows(
        self, fault: Parameters, inventory: Inventory, offset: int, limit: int, read: int
    ) -> Rows:
        return inventory.page(offset + 1 if offset > 0 else offset, limit)


class DuplicateRows(FaultKind):
    """A page not at offset 0 starts with the previous page's last row."""

    endpoints = STATIONS

    def rows(
        self, fault: Parameters, inventory: Inventory, offset: int, limit: int, read: int
    ) -> Rows:
        if offset == 0:
            return inventory.page(offset, limit)
        window, total = inventory.page(offset - 1, limit + 1)  # one consistent view
        rows = window[1:]
        if rows:
            rows[0] = window[0]
        return rows, total


class DuplicateStation(FaultKind):
    """The listing has its first station once more at its end."""

    endpoints = STATIONS

    def rows(
        self, fault: Parameters, inventory: Inventory, offset: int, limit: int, read: int
    ) -> Rows:
        listing = inventory.stations()  # one consistent view, as page() gives
        listing += listing[:1]
        return listing[offset : offset + limit], len(listing)


class NewFleet(FaultKind):
    """Every read lists a fleet of new stations, as many as the inventory."""

    endpoints = STATIONS

    def rows(
        self, fault: Parameters, inventory: Inventory, offset: int, limit: int, read: int
    ) -> Rows:
        total = len(inventory)
        end = min(offset + limit, total)
        return [_endless_station(n, read) for n in range(offset, end)], total


class Endless(FaultKind):
    """A listing that never ends: pages of new stations, no total, never a last page."""

    endpoints = STATIONS
    takes = (Param("per_page", _integer(1, MAX_ENDLESS_ROWS)),)

    def rows(
        self, fault: Parameters, inventory: Inventory, offset: int, limit: int, read: int
    ) -> Rows:
        count = fault.per_page or limit
        return [_endless_station(offset + n) for n in range(count)], offset + count + 1

    def page(self, document: dict[str, Any]) -> Any:
        return _never_last(document)


class EndlessWide(FaultKind):
    """As Endless, every station's texts as wide as the exporter keeps."""

    endpoints = STATIONS

    def rows(
        self, fault: Parameters, inventory: Inventory, offset: int, limit: int, read: int
    ) -> Rows:
        return [_wide(_endless_station(offset + n)) for n in range(limit)], offset + limit + 1

    def page(self, document: dict[str, Any]) -> Any:
        return _never_last(document)


@dataclass(frozen=True, slots=True)
class Reshape(FaultKind):
    """The stations page, changed in place by ``reshape``."""

    endpoints = STATIONS
    reshape: Callable[[dict[str, Any]], object]

    def page(self, document: dict[str, Any]) -> Any:
        self.reshape(document)
        return document


@dataclass(frozen=True, slots=True)
class LabelSuffix(FaultKind):
    """The page's last row's label ends in ``suffix``."""

    endpoints = STATIONS
    suffix: str

    def page(self, document: dict[str, Any]) -> Any:
        rows = document["data"]
        if rows:
            attributes = rows[-1]["attributes"]
            attributes["label"] = f"{attributes.get('label') or ''}{self.suffix}"
        return document


@dataclass(frozen=True, slots=True)
class NotUtf8Label(LabelSuffix):
    """The page as bytes, its last row's label ending in bytes that are not UTF-8."""

    suffix: str = "@@not-utf-8@@"  # a marker, replaced in the bytes

    def page(self, document: dict[str, Any]) -> Any:
        text = json.dumps(LabelSuffix.page(self, document))
        return text.encode().replace(self.suffix.encode(), _NOT_UTF8)


# What the kinds send


def _oauth_error(status: int) -> str:
    """The RFC 6749 error code a token endpoint would send with ``status``."""
    if status in (400, 401):
        return "invalid_client"
    if status == 403:
        return "unauthorized_client"
    if status == 429 or status >= 500:
        return "temporarily_unavailable"
    return "invalid_request"


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


def _pagination(document: dict[str, Any]) -> dict[str, Any]:
    pagination: dict[str, Any] = document["meta"]["pagination"]
    return pagination


def _never_last(document: dict[str, Any]) -> dict[str, Any]:
    """The page of a listing that has no total and no last page."""
    del _pagination(document)["total"]
    _pagination(document)["lastPage"] = False
    return document


def drop_data(document: dict[str, Any]) -> None:
    del document["data"]


def drop_meta_and_links(document: dict[str, Any]) -> None:
    del document["meta"], document["links"]


def null_attributes(document: dict[str, Any]) -> None:
    for row in document["data"]:
        row["attributes"] = None


def wrong_types(document: dict[str, Any]) -> None:
    """Every attribute value a number, list, object or boolean in turn; the total a string."""
    for row in document["data"]:
        row["attributes"] = {
            name: (12345, [value], {"value": value}, True)[index % 4]
            for index, (name, value) in enumerate(row["attributes"].items())
        }
    _pagination(document)["total"] = str(_pagination(document)["total"])


def data_not_list(document: dict[str, Any]) -> None:
    rows = document["data"]
    document["data"] = rows[0] if rows else {}


def total_drift(document: dict[str, Any]) -> None:
    _pagination(document)["total"] += 1
