"""The simulator's faults: FAULT_KINDS, the one table of fault kinds (each row a small type of
``faultkinds`` that says what the kind does, where, and which parameters it takes), and the
``Fault`` a test switches on, checked against its kind. Loaded only when a fault is added (by
``Fault`` in Python or POST /_sim/faults): a demo never needs it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields, replace
from functools import partial
from typing import Any, Protocol
from urllib.parse import SplitResult

from exporter.simulator.faultkinds import (
    CONTROL_LABEL_SUFFIX,
    FAULT_ENDPOINTS,
    LONG_LABEL_LENGTH,
    ActFirst,
    Alter,
    Call,
    ChangeFleetFirst,
    Drip,
    DuplicateRows,
    DuplicateStation,
    EchoSecret,
    Endless,
    EndlessWide,
    ExpiresIn,
    FaultKind,
    Hang,
    Html,
    HugeError,
    LabelSuffix,
    Latency,
    NewFleet,
    NotUtf8Label,
    Oversized,
    Redirect,
    Reshape,
    Rows,
    SkipRow,
    Status,
    Target,
    check_int,
    data_not_list,
    drop_data,
    drop_meta_and_links,
    null_attributes,
    total_drift,
    wrong_types,
)
from exporter.simulator.inventory import Inventory
from exporter.simulator.wire import Ending, Request, Response

# The page kinds change 200 pages only (a 401 stays a plain 401) and exist for stations only.
FAULT_KINDS: dict[str, FaultKind] = {
    "status": Status(
        "answer ``status`` with a JSON:API (stations) or OAuth2 (token) error body and "
        "``Retry-After: retry_after`` when given"
    ),
    "latency": Latency("wait ``seconds`` more, then answer normally"),
    "hang": Hang("answer nothing for ``seconds`` (30), then close; a clear or stop ends it"),
    "disconnect": Alter(
        "send headers with the full Content-Length, half the body, then close",
        lambda response: replace(response, ending=Ending.HALF_BODY),
    ),
    "truncated": Alter(
        "the first half of the body with an honest Content-Length",
        lambda response: replace(response, body=response.payload[: len(response.payload) // 2]),
    ),
    "html": Html("a proxy's HTML error page, with 200 or ``status``"),
    "wrong_content_type": Alter(
        "the normal body as text/plain",
        lambda response: replace(response, content_type="text/plain"),
    ),
    "no_data": Reshape('the page without "data"', drop_data),
    "no_meta": Reshape('the page without "meta" and "links"', drop_meta_and_links),
    "null_attributes": Reshape('every row\'s "attributes" is null', null_attributes),
    "wrong_types": Reshape(
        "attribute values are numbers, lists, objects, booleans; total a string", wrong_types
    ),
    "data_not_list": Reshape(
        '"data" is the page\'s first row (an object) instead of a list', data_not_list
    ),
    "revoke_token": ActFirst(
        "revoke every token first (the request gets 401 on stations)",
        lambda target: target.revoke_tokens(),
    ),
    "expire_token": ActFirst(
        "expire every token first (401 as well; listed as expired, not revoked)",
        lambda target: target.expire_tokens(),
    ),
    "insert_rows": ChangeFleetFirst(
        "insert one station at the start of the inventory first",
        lambda target: target.inventory.add(1, at_start=True),
    ),
    "delete_rows": ChangeFleetFirst(
        "delete the inventory's first station first",
        lambda target: target.inventory.remove_first(1),
    ),
    "total_drift": Reshape("meta.pagination.total is one too many", total_drift),
    "duplicate_rows": DuplicateRows(
        "the page's first row is the previous page's last one (not at offset 0)"
    ),
    "skip_row": SkipRow(
        "the page starts one row late, the row at page[offset] left out, the total unchanged "
        "(not at offset 0): a torn read that no change of the fleet explains"
    ),
    "echo_secret": EchoSecret(
        "401 whose error and error_description echo the client secret plain, URL-encoded, "
        "JSON-escaped and in base64 of id:secret (plain and form-encoded, standard and URL-safe)"
    ),
    "huge_error": HugeError(
        "400 with a 60 KB error_description holding the secret: far longer than a log line, "
        "yet under the exporter's 64 KiB token cap"
    ),
    "expires_in_nan": ExpiresIn("a valid token whose expires_in is NaN (raw JSON text)", "NaN"),
    "expires_in_infinity": ExpiresIn("a valid token whose expires_in is Infinity", "Infinity"),
    "expires_in_1e400": ExpiresIn("a valid token whose expires_in is 1e400", "1e400"),
    "expires_in_negative": ExpiresIn("a valid token whose expires_in is -3600", "-3600"),
    "expires_in_string": ExpiresIn('a valid token whose expires_in is "3600"', '"3600"'),
    "redirect": Redirect(
        "``status`` (307 unless given: 301, 302, 303, 307 or 308) to the same path and query "
        "at another origin: a second simulator on another port with the same client and a "
        "fleet of its own (3 stations) that it serves without a token; its "
        "GET /_sim/credentials counts the requests that carried the client secret there"
    ),
    "surrogate_label": LabelSuffix(
        "the page's last row's label ends in a lone surrogate (JSON \"\\ud800\")", "\ud800"
    ),
    "non_utf8_label": NotUtf8Label("the page's last row's label ends in bytes that are not UTF-8"),
    "control_label": LabelSuffix(
        "the page's last row's label holds CR and ESC (a forged log line)", CONTROL_LABEL_SUFFIX
    ),
    "long_label": LabelSuffix(
        "the page's last row's label is LONG_LABEL_LENGTH characters longer",
        " " + "x" * (LONG_LABEL_LENGTH - 1),
    ),
    "duplicate_station": DuplicateStation(
        "the listing has the inventory's first station once more at its end, in every read, "
        "with a total that counts it (the API's own duplicate)"
    ),
    "drip": Drip(
        "the normal answer, its body (or with ``part: headers`` its status line and headers) "
        "sent DRIP_BYTES at a time every ``seconds`` (1); a clear sends the rest at once"
    ),
    "oversized": Oversized(
        "the normal answer padded to ``size`` bytes (50 MB) of valid JSON, with an honest "
        "Content-Length, streamed without being held in memory"
    ),
    "endless": Endless(
        "a listing that never ends: every page full of stations not listed before it, "
        "``per_page`` of them whatever page[limit] asks (else page[limit] as clamped), with no "
        "total and lastPage false"
    ),
    "endless_wide": EndlessWide(
        "as endless, every page as full as page[limit] asks, but every station's texts and "
        "firmware are 256 characters outside the Basic Multilingual Plane (the widest text "
        "the exporter keeps: about 5,400 bytes a station held)"
    ),
    "new_fleet": NewFleet(
        "every read (a request at page[offset]=0) lists a new fleet: as many stations as the "
        "inventory, none of them listed in an earlier read, with a total that matches"
    ),
}
PARAMETERS = ("status", "retry_after", "seconds", "part", "size", "per_page")
"""The fields of Fault that only some kinds take (each kind's ``takes``)."""


class FaultTarget(Target, Protocol):
    """What a fault acts on and answers around: the Simulator, as this module sees it without
    importing it."""

    def answer(
        self, endpoint: str, request: Request, url: SplitResult, fault: Fault | None
    ) -> Response: ...


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault to inject into requests to ``endpoint``: a kind of FAULT_KINDS and the
    parameters that kind takes. Invalid combinations raise ValueError with what to change.

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
        if not isinstance(self.kind, str) or self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {', '.join(FAULT_KINDS)}")
        if self.endpoint not in FAULT_ENDPOINTS:
            raise ValueError(f"endpoint must be 'stations' or 'token', got {self.endpoint!r}")
        endpoints = FAULT_KINDS[self.kind].endpoints
        if self.endpoint not in endpoints:
            raise ValueError(f"a {self.kind} fault works on the {endpoints[0]} endpoint only")
        for name in PARAMETERS:
            _check_parameter(self.kind, name, getattr(self, name))
        if self.times is not None:
            check_int("times", self.times, 1)
        check_int("after", self.after, 0)

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
        normal = partial(target.answer, endpoint, request, url, self)
        return FAULT_KINDS[self.kind].respond(self, Call(target, endpoint, request, normal, wake))

    def rows(self, inventory: Inventory, offset: int, limit: int, read: int) -> Rows:
        """One page of stations and the total, as the stations endpoint lists them with this
        fault on in its ``read``-th read (the requests at page[offset]=0 so far)."""
        return FAULT_KINDS[self.kind].rows(self, inventory, offset, limit, read)

    def page(self, document: dict[str, Any]) -> Any:
        """The stations page ``document`` as this fault sends it: reshaped in place, or as bytes
        that are not UTF-8."""
        return FAULT_KINDS[self.kind].page(document)


def _check_parameter(kind: str, name: str, value: object) -> None:
    """Refuse ``value`` of the parameter ``name`` unless ``kind`` takes it and it is valid."""
    param = FAULT_KINDS[kind].param(name)
    if param is None and value is not None:
        takers = [other for other, row in FAULT_KINDS.items() if row.param(name)]
        raise ValueError(f"{name} is for {_listed(takers)} faults, not for {kind}")
    if param is not None and (value is not None or param.required):
        param.check(name, value, kind)


def _listed(names: list[str]) -> str:
    """``names`` as English lists them: "a", "a and b", "a, b and c"."""
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
