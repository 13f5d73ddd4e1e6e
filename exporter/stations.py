"""The station list's answers read: untrusted JSON becomes Station records here.

The one place that repairs text from the API: an id or a text that no label may hold becomes
one that it may (``_repair``), and the repair is noted in the station's data issues. Knows
JSON:API's resource objects, nothing of HTTP or of the pages of the listing.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Mapping
from typing import Any

from exporter.errors import ParseError
from exporter.model import MAX_TEXT_LENGTH, TEXT_SEPARATOR, Station

REPLACEMENT = "\ufffd"
_INVALID_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""What no label may hold: C0 controls (tab, newline, CR, ESC, ...), DEL and C1 controls, which
forge log lines and drive terminals, and lone surrogates (JSON's ``\\ud800`` escapes, and bytes
that are not UTF-8 through ``decode_json``), which cannot be encoded as UTF-8 at all."""
_ID_DIGEST_LENGTH = 16
_NO_SIM_DATA = ("no_sim_data",)
_ATTRIBUTES = ("label", "chargeBoxIdentity", "firmwareVersion", "serialnumber", "iccid", "imsi")


def decode_json(body: bytes) -> Any:
    """A response body as JSON. Bytes that are not UTF-8 become lone surrogates (rather than
    the mojibake of a guessed encoding), which ``parse_station`` repairs like any bad text.
    Raises ValueError for anything that is not JSON, including nesting too deep to parse."""
    try:
        return json.loads(body.decode("utf-8", "surrogateescape"))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _repair(texts: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``texts`` (the station id first) made safe as labels, and the data issues repaired.

    Every invalid character becomes U+FFFD (invalid_text); text longer than MAX_TEXT_LENGTH is
    cut to that length, its last character an ellipsis (text_too_long). An id is a key, so a
    repaired id ends in '#' and part of the SHA-256 of the id as sent instead: two ids that
    differ only in what was repaired (or cut) stay two stations, the same in every refresh.
    """
    repaired = []
    invalid = too_long = False
    for index, text in enumerate(texts):
        fixed, count = _INVALID_TEXT.subn(REPLACEMENT, text)
        long = len(fixed) > MAX_TEXT_LENGTH
        if index == 0 and (count or long):
            digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
            fixed = fixed[: MAX_TEXT_LENGTH - _ID_DIGEST_LENGTH - 1]
            fixed += "#" + digest[:_ID_DIGEST_LENGTH]
        elif long:
            fixed = fixed[: MAX_TEXT_LENGTH - 1] + "…"
        invalid |= count > 0
        too_long |= long
        repaired.append(fixed)
    issues = (("invalid_text",) if invalid else ()) + (("text_too_long",) if too_long else ())
    return tuple(repaired), issues


def _text(value: Any, name: str, station_id: str) -> str:
    """One attribute as label text: strings as they are, numbers as text, missing/null as ''."""
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ParseError(
        f"charging station {station_id[:MAX_TEXT_LENGTH]!r}: attribute {name} is a "
        f"{type(value).__name__}, not text (has the API changed?)"
    )


def _fields(row: Any) -> list[str]:
    """The id of the resource object ``row`` and the texts of its ``_ATTRIBUTES``, unrepaired;
    ParseError for a row without an id, and for schema drift."""
    if row.__class__ is not dict:
        raise ParseError(f"charging station entry is a {type(row).__name__}, not an object")
    station_id = row.get("id")
    if not isinstance(station_id, str) or not station_id:
        if not isinstance(station_id, int) or isinstance(station_id, bool):
            raise ParseError("charging station entry has no id")
        station_id = str(station_id)
    attributes = row.get("attributes")
    if attributes.__class__ is not dict:
        shape = "missing" if attributes is None else f"a {type(attributes).__name__}"
        raise ParseError(
            f"charging station {station_id[:MAX_TEXT_LENGTH]!r}: attributes is {shape}, "
            "not an object (has the API changed?)"
        )
    values = [station_id]
    for name in _ATTRIBUTES:
        value = attributes.get(name)
        values.append(value if value.__class__ is str else _text(value, name, station_id))
    return values


def parse_station(
    row: Any, known: Mapping[str, Station] | None = None, *, serial_numbers: bool = True
) -> Station:
    """One JSON:API resource object -> Station.

    Missing or null attribute values become ''. A row whose ``attributes`` is not an object, or
    an attribute that is a list, object or boolean, is schema drift: a ParseError, so a changed
    API never turns into a fleet of nameless stations on "unknown" firmware. The id and the
    text attributes kept are repaired (``_repair``) and the repair noted in ``repairs``: one
    bad record must not break the output of every mandant. A station equal to one in
    ``known`` (the fleet already held) is returned as that object, so an unchanged fleet costs
    no second copy in memory. Without ``serial_numbers`` (only the info metric shows them) the
    serial number is left empty, which a million stations notice.
    """
    station_id, label, charge_box_identity, firmware_version, serial_number, iccid, imsi = _fields(
        row
    )
    if not serial_numbers:
        serial_number = ""
    has_sim_data = bool(iccid and imsi)
    old = known.get(station_id) if known else None
    if (
        old is not None
        and old.firmware_version == firmware_version
        and old.issues == (() if has_sim_data else _NO_SIM_DATA)  # no repairs: clean text
        # A stored text never holds the separator, so equal joins are equal texts.
        and old.texts
        == f"{label}{TEXT_SEPARATOR}{charge_box_identity}{TEXT_SEPARATOR}{serial_number}"
    ):
        return old
    texts = (station_id, label, charge_box_identity, firmware_version, serial_number)
    return _new_station(texts, has_sim_data, known)


def _new_station(
    texts: tuple[str, ...], has_sim_data: bool, known: Mapping[str, Station] | None
) -> Station:
    """The Station of ``texts`` (id, label, charge box identity, firmware, serial number),
    repaired where they need it; the object in ``known`` if that was repaired the same way."""
    repairs: tuple[str, ...] = ()
    # One cheap test for the common case, printable text (no control characters, no lone
    # surrogates) of modest length, which needs no repair.
    joined = "".join(texts)
    if len(joined) > MAX_TEXT_LENGTH or not joined.isprintable():
        texts, repairs = _repair(texts)
    station_id, label, charge_box_identity, firmware_version, serial_number = texts
    station = Station(
        station_id,
        label,
        charge_box_identity,
        sys.intern(firmware_version),
        serial_number,
        has_sim_data,
        repairs,
    )
    if repairs and known:  # repaired the same way as in the fleet held: keep that object
        old = known.get(station_id)
        if old is not None and old == station:
            return old
    return station


def parse_page(
    document: Any, known: Mapping[str, Station] | None = None, *, serial_numbers: bool = True
) -> tuple[list[Station], dict[str, Any]]:
    """A stations page -> (stations, meta.pagination or {}); raises ParseError on a wrong shape."""
    if not isinstance(document, dict):
        raise ParseError("charging stations answer is not a JSON object")
    data = document.get("data")
    if not isinstance(data, list):
        raise ParseError("charging stations answer has no data list")
    meta = document.get("meta")
    pagination = meta.get("pagination") if isinstance(meta, dict) else None
    return [parse_station(row, known, serial_numbers=serial_numbers) for row in data], (
        pagination if isinstance(pagination, dict) else {}
    )
