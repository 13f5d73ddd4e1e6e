"""The be.ENERGISED CPO API client: JSON:API pagination of the charging station list.

Knows HTTP and JSON:API, nothing of Prometheus. Pagination does not trust ``links.next`` (the
quickstart's own sample skips records with it): the offset advances by the rows received.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import requests

from exporter.auth import TokenSource
from exporter.errors import ApiHttpError, AuthError, PaginationError, ParseError
from exporter.http import DEFAULT_RETRY, Deadline, ResponseHook, RetryPolicy, send
from exporter.model import Station

LOG = logging.getLogger(__name__)

STATIONS_PATH = "/api/cpoapi/v1/charging_stations/"
MAX_PAGES = 10_000
"""Upper bound of pages per listing, so a server that never says "last page" cannot loop us."""


def _text(attributes: dict[str, Any], name: str, station_id: str) -> str:
    """One attribute as label text: strings as they are, numbers as text, missing/null as ''."""
    value = attributes.get(name)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ParseError(
        f"charging station {station_id!r}: attribute {name} is a {type(value).__name__}, "
        "not text (has the API changed?)"
    )


def parse_station(row: Any) -> Station:
    """One JSON:API resource object -> Station.

    Missing or null attribute values become ''. A row whose ``attributes`` is not an object, or
    an attribute that is a list, object or boolean, is schema drift: a ParseError, so a changed
    API never turns into a fleet of nameless stations on "unknown" firmware.
    """
    if not isinstance(row, dict):
        raise ParseError(f"charging station entry is a {type(row).__name__}, not an object")
    station_id = row.get("id")
    if isinstance(station_id, int) and not isinstance(station_id, bool):
        station_id = str(station_id)
    if not isinstance(station_id, str) or not station_id:
        raise ParseError("charging station entry has no id")
    attributes = row.get("attributes")
    if not isinstance(attributes, dict):
        raise ParseError(
            f"charging station {station_id!r}: attributes is "
            f"{'missing' if attributes is None else 'a ' + type(attributes).__name__}, "
            "not an object (has the API changed?)"
        )
    return Station(
        id=station_id,
        label=_text(attributes, "label", station_id),
        charge_box_identity=_text(attributes, "chargeBoxIdentity", station_id),
        firmware_version=_text(attributes, "firmwareVersion", station_id),
        serial_number=_text(attributes, "serialnumber", station_id),
    )


def parse_page(document: Any) -> tuple[list[Station], dict[str, Any]]:
    """A stations page -> (stations, meta.pagination or {}); raises ParseError on a wrong shape."""
    if not isinstance(document, dict):
        raise ParseError("charging stations answer is not a JSON object")
    data = document.get("data")
    if not isinstance(data, list):
        raise ParseError("charging stations answer has no data list")
    meta = document.get("meta")
    pagination = meta.get("pagination") if isinstance(meta, dict) else None
    return [parse_station(row) for row in data], (
        pagination if isinstance(pagination, dict) else {}
    )


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class CpoClient:
    """Reads every page of one mandant's charging station list."""

    def __init__(
        self,
        *,
        api_url: str,
        tokens: TokenSource,
        session: requests.Session,
        page_limit: int,
        max_pages: int = MAX_PAGES,
        on_response: ResponseHook | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self._url = api_url.rstrip("/") + STATIONS_PATH
        self._host = urlsplit(api_url).netloc
        self._tokens = tokens
        self._session = session
        self._page_limit = page_limit
        self._max_pages = max_pages
        self._on_response = on_response or (lambda endpoint, code: None)
        self._retry = retry

    def stations(self, deadline: Deadline) -> list[Station]:
        """Every station of the listing, in the order the API gave them.

        A listing that changed while we read it (the total moved, the rows received do not add
        up to the total, or a station came twice) is read once more; if it is inconsistent
        again nothing is returned, so a half-read list is never taken for a fleet that shrank.
        """
        problem = ""
        for attempt in (1, 2):
            rows, problem = self._read_listing(deadline)
            if not problem:
                return rows
            if attempt == 1:
                LOG.info(
                    "listing of %s changed while reading (%s); reading it again",
                    self._host,
                    problem,
                )
        raise PaginationError(
            f"charging stations of {self._host}: listing inconsistent twice in a row ({problem})"
        )

    def _read_listing(self, deadline: Deadline) -> tuple[list[Station], str]:
        """All rows of one walk through the pages, and what makes it inconsistent ('' if OK)."""
        rows: list[Station] = []
        totals: set[int] = set()
        pages = 0
        offset = 0
        while True:
            if pages == self._max_pages:
                raise ParseError(
                    f"charging stations of {self._host}: no last page after {pages} pages"
                )
            stations, pagination = parse_page(self._get_page(offset, deadline))
            pages += 1
            rows.extend(stations)
            offset += len(stations)
            total = _int_or_none(pagination.get("total"))
            if total is not None:
                totals.add(total)
            if (
                not stations
                or pagination.get("lastPage") is True
                or (total is not None and offset >= total)
            ):
                break
        LOG.debug("read %d rows from %s in %d page(s)", len(rows), self._host, pages)
        if len(totals) > 1:
            return rows, f"total went from {min(totals)} to {max(totals)}"
        if totals and len(rows) != next(iter(totals)):
            return rows, f"{len(rows)} rows received for a total of {next(iter(totals))}"
        repeated = len(rows) - len({station.id for station in rows})
        if repeated:
            return rows, f"{repeated} station(s) listed twice"
        return rows, ""

    def _get_page(self, offset: int, deadline: Deadline) -> Any:
        params = {"page[limit]": self._page_limit, "page[offset]": offset}
        token = self._tokens.token(deadline)
        response = self._request(params, token, deadline)
        if response.status_code == 401:
            # The token may have been revoked or expired early: one retry with a fresh one.
            self._tokens.invalidate(token)
            response = self._request(params, self._tokens.token(deadline), deadline)
            if response.status_code == 401:
                raise AuthError(
                    f"charging stations of {self._host}: a fresh token was rejected (HTTP 401); "
                    "check that the API client has a cpoapi scope"
                )
        if response.status_code == 403:
            raise AuthError(
                f"charging stations of {self._host}: forbidden (HTTP 403); check the scopes and "
                "entity restrictions of the API client"
            )
        if response.status_code != 200:
            raise ApiHttpError(
                f"charging stations of {self._host}: HTTP {response.status_code} "
                f"at page[offset]={offset}"
            )
        content_type = response.headers.get("Content-Type", "")
        if content_type and "json" not in content_type.lower():
            raise ParseError(
                f"charging stations of {self._host}: answer at page[offset]={offset} is "
                f"{content_type.split(';')[0]!r}, not JSON"
            )
        try:
            return response.json()
        except ValueError:
            raise ParseError(
                f"charging stations of {self._host}: answer at page[offset]={offset} is not JSON"
            ) from None

    def _request(self, params: dict[str, int], token: str, deadline: Deadline) -> requests.Response:
        return send(
            self._session,
            "GET",
            self._url,
            endpoint="charging_stations",
            what=f"charging stations of {self._host}",
            on_response=self._on_response,
            deadline=deadline,
            retry=self._retry,
            params=params,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.api+json, application/json",
            },
        )
