"""The be.ENERGISED CPO API client: JSON:API pagination of the charging station list.

Knows HTTP and JSON:API, nothing of Prometheus. Pagination does not trust ``links.next`` (the
quickstart's own sample skips records with it): the offset advances by the rows received.
Each answer becomes Station records in ``exporter.stations``, the one place that repairs text.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import Any
from urllib.parse import urlsplit

from exporter.auth import TokenSource
from exporter.authheader import HeaderForm, header_value, shown
from exporter.errors import (
    ApiHttpError,
    AuthError,
    ListingTooLargeError,
    PaginationError,
    ParseError,
    RefreshError,
)
from exporter.http import (
    DEFAULT_LIMITS,
    DEFAULT_RETRY,
    Answer,
    Deadline,
    Limits,
    RequestCounter,
    ResponseHook,
    RetryPolicy,
    environment_proxies,
    send,
)
from exporter.model import Mandant, Station, repeated, same_objects
from exporter.session import BoundedSession
from exporter.stations import decode_json, parse_page

LOG = logging.getLogger(__name__)

STATIONS_PATH = "/api/cpoapi/v1/charging_stations/"
MAX_PAGES = 10_000
"""Upper bound of pages per read of the listing, so a server that sends a row or two a page and
never says "last page" cannot loop us (nor fill memory with the pages' lists)."""
MAX_STATIONS = 1_000_000
"""Default upper bound of the rows one read of the listing holds (--api.max-stations): 10,000
pages of the default 100 rows, the size the exporter is benchmarked at."""


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _total(pagination: dict[str, Any]) -> int | None:
    return _int_or_none(pagination.get("total"))


def _is_last(pagination: dict[str, Any], offset: int, totals: set[int]) -> bool:
    """Whether the page ending at ``offset`` ends the listing (an empty page is checked apart);
    ``totals`` are the totals announced so far."""
    return pagination.get("lastPage") is True or any(offset >= total for total in totals)


def _torn(offset: int, totals: set[int]) -> str:
    """What already makes a walk through the pages inconsistent after ``offset`` rows, with
    the totals announced so far, or '' when nothing does yet."""
    if len(totals) > 1:
        return f"total went from {min(totals)} to {max(totals)}"
    if totals and offset > (total := next(iter(totals))):
        return f"{offset} rows received for a total of {total}"
    return ""


def _short(offset: int, totals: set[int]) -> str:
    """What makes a whole walk of ``offset`` rows inconsistent beyond ``_torn``: fewer rows
    than the total announced, or '' when it is complete."""
    if totals and offset < (total := next(iter(totals))):
        return f"{offset} rows received for a total of {total}"
    return ""


def _repeated_ids(rows: list[Station], known: Mapping[str, Station] | None) -> frozenset[str]:
    """The ids that come more than once in one read of the listing."""
    if known is not None and same_objects(rows, known):
        return frozenset()  # the fleet held, unchanged: no id twice
    return frozenset(repeated(rows, attrgetter("id")))


class _Gate:
    """At most ``limit`` requests at once; the limit halves (for this read) on HTTP 429."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._active = 0
        self._changed = threading.Condition()

    def shrink(self) -> None:
        with self._changed:
            if self.limit > 1:
                self.limit //= 2
                LOG.info("HTTP 429: fetching at most %d page(s) at once", self.limit)

    def __enter__(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._active < self.limit)
            self._active += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._changed:
            self._active -= 1
            self._changed.notify_all()


BYTES_PER_STATION = 400
"""Bytes of text a refresh may create per station of --api.max-stations (room for an ordinary
station's id and texts with a non-ASCII label; bench/profile_memory.py measures them):
stations of the longest, widest text take 5,400, and a million of them would take 5 GB."""


_DECODING = threading.Lock()
"""Held while an answer of the listing is decoded and parsed (see ``CpoClient._page``)."""


class StationBudget:
    """The stations one refresh may create: ``stations``, and ``stations`` x
    :data:`BYTES_PER_STATION` bytes of their text, over all its reads and pages. A station a
    read returns as the object already held costs nothing; a new or changed one is held
    beside the published fleet until the refresh ends, and a listing that shows a new fleet
    in each read would otherwise make a refresh hold it once per read. Thread-safe: pages
    fetched concurrently spend from it as they arrive."""

    def __init__(self, stations: int) -> None:
        self.stations = stations
        self.bytes = stations * BYTES_PER_STATION
        self.created = 0
        self.created_bytes = 0
        self._lock = threading.Lock()

    def spend(self, stations: list[Station]) -> str:
        """Count ``stations`` created; what was passed ('' while within the budget)."""
        size = sum(
            sys.getsizeof(s.id) + sys.getsizeof(s.texts) + sys.getsizeof(s.firmware_version)
            for s in stations
        )
        with self._lock:
            self.created += len(stations)
            self.created_bytes += size
            if self.created > self.stations:
                return f"more than {self.stations} stations"
            if self.created_bytes > self.bytes:
                return (
                    f"more than {self.bytes // 1_000_000} MB of station text "
                    f"({BYTES_PER_STATION} bytes a station of --api.max-stations)"
                )
            return ""


@dataclass(frozen=True, slots=True)
class _Walk:
    """What the pages of one read of the listing share."""

    deadline: Deadline
    gate: _Gate
    limit: int  # page[limit] asked for
    known: Mapping[str, Station] | None  # the stations already held, reused where unchanged
    budget: StationBudget


class CpoClient:
    """Reads every page of one mandant's charging station list."""

    def __init__(
        self,
        *,
        api_url: str,
        tokens: TokenSource,
        session: BoundedSession,
        page_limit: int,
        concurrency: int = 1,
        max_pages: int = MAX_PAGES,
        max_stations: int = MAX_STATIONS,
        on_response: ResponseHook | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        limits: Limits = DEFAULT_LIMITS,
        serial_numbers: bool = True,
        header: HeaderForm | None = None,
    ) -> None:
        self._url = api_url.rstrip("/") + STATIONS_PATH
        self._host = urlsplit(api_url).netloc
        self.header = header or HeaderForm("auto", self._host)
        self._tokens = tokens
        self._session = session
        self._page_limit = page_limit
        self._concurrency = concurrency
        self._max_pages = max_pages
        self._max_stations = max_stations
        self._on_response = on_response or (lambda endpoint, code: None)
        self._retry = retry
        self._limits = limits
        self._proxies = environment_proxies(self._url)
        self._serial_numbers = serial_numbers  # kept only where the info metric shows them

    def budget(self) -> StationBudget:
        """A new budget of the stations one refresh may create (--api.max-stations)."""
        return StationBudget(self._max_stations)

    def stations(
        self,
        deadline: Deadline,
        known: Mapping[str, Station] | None = None,
        budget: StationBudget | None = None,
    ) -> list[Station]:
        """Every station of the listing, in the order the API gave them.

        The first read fetches the pages after the first concurrently; a listing that changed
        while we read it (the total moved, or the rows received do not add up to the total) is
        read once more, page after page; if it is inconsistent again nothing is returned, so a
        half-read list is never taken for a fleet that shrank.

        A station that comes twice in a consistent read is read again in pages of another size:
        a row repeated by a listing that moved sits at a page boundary and moves with the page
        size, while a station the API itself lists twice stays. The same ids twice in both reads
        are the API's data: returned as listed (``Snapshot.build`` keeps the first row of an id
        and counts the id); other repeats are a torn read.

        A read holds at most ``max_stations`` rows and a page, and is dropped before the next
        one starts; every station a read creates (one not in ``known``) is spent from
        ``budget``, which a refresh shares between its calls (a new one per call without it).
        """
        budget = budget or self.budget()
        rows, problem, page_size = self._read_listing(
            _Walk(deadline, _Gate(self._concurrency), self._page_limit, known, budget)
        )
        if problem:
            LOG.info(
                "listing of %s changed while reading (%s); reading it again", self._host, problem
            )
            del rows
            rows, problem, page_size = self._read_listing(
                _Walk(deadline, _Gate(1), self._page_limit, known, budget)
            )
            if problem:
                raise PaginationError(
                    f"charging stations of {self._host}: listing inconsistent twice in a row "
                    f"({problem})"
                )
        twice = _repeated_ids(rows, known)
        if not twice:
            return rows
        del rows
        other_size = page_size - 1 if page_size > 1 else 2
        LOG.info(
            "listing of %s has %d station(s) listed twice; reading it again in pages of %d",
            self._host,
            len(twice),
            other_size,
        )
        again, problem, _ = self._read_listing(
            _Walk(deadline, _Gate(self._concurrency), other_size, known, budget)
        )
        repeated_again = _repeated_ids(again, known)
        if not problem and repeated_again and repeated_again != twice:
            problem = f"other stations listed twice in pages of {other_size} than of {page_size}"
        if problem:
            raise PaginationError(
                f"charging stations of {self._host}: listing inconsistent twice in a row "
                f"({problem})"
            )
        if repeated_again:
            LOG.info(
                "listing of %s has the same %d station(s) listed twice in pages of %d and of %d: "
                "the API's data, published once each (data issue duplicate_station_id)",
                self._host,
                len(repeated_again),
                page_size,
                other_size,
            )
        return again

    def _read_listing(self, walk: _Walk) -> tuple[list[Station], str, int]:
        """All rows of one walk through pages of ``walk.limit`` (or fewer, as the server clamps
        it), what makes it inconsistent ('' if OK) and the rows of its first page.

        The walk stops as soon as it is inconsistent (a total moved, or more rows came than
        the total), and fails once it holds more than ``max_stations`` rows or needs more than
        ``max_pages`` pages, so it never holds more than ``max_stations`` rows and a page.
        """
        pages = [self._page(walk, 0)]
        stations, pagination = pages[0]
        step = len(stations)
        total = _total(pagination)
        if total is not None and total > self._max_stations:
            raise ListingTooLargeError(
                f"charging stations of {self._host}: the API announces {total} stations, more "
                f"than a refresh may hold ({self._max_stations}); raise --api.max-stations if "
                "the fleet is that large"
            )
        if walk.gate.limit > 1 and total is not None and not _is_last(pagination, step, {total}):
            offsets = range(step, total, step) if step else range(0)
            if step and total > step * self._max_pages:  # len(offsets) overflows past 2**63
                raise self._too_many_pages(f"{total} stations in pages of {step} announced", total)
            # Asked for ``step`` rows each, the pages can hold no more than the total and a page.
            pages += self._fetch_concurrently(replace(walk, limit=step), offsets)
        offset = sum(len(page) for page, _ in pages)
        totals = {total for _, p in pages if (total := _total(p)) is not None}
        problem = _torn(offset, totals)
        while not problem and pages[-1][0] and not _is_last(pages[-1][1], offset, totals):
            if len(pages) == self._max_pages:
                raise self._too_many_pages(
                    f"no last page after {len(pages)} pages ({offset} rows)", offset
                )
            pages.append(self._page(walk, offset))
            offset += len(pages[-1][0])
            if offset > self._max_stations:
                raise ListingTooLargeError(
                    f"charging stations of {self._host}: more than {self._max_stations} "
                    f"stations listed ({offset} rows received in {len(pages)} pages); raise "
                    "--api.max-stations if the fleet is that large"
                )
            if (total := _total(pages[-1][1])) is not None:
                totals.add(total)
            problem = _torn(offset, totals)
        LOG.debug("read %d rows from %s in %d page(s)", offset, self._host, len(pages))
        rows: list[Station] = []
        pages.reverse()
        while pages:  # each page's list goes as soon as its rows are in ``rows``
            rows += pages.pop()[0]
        return rows, problem or _short(offset, totals), step

    def _too_many_pages(self, what: str, stations: int) -> ListingTooLargeError:
        """The read needs more pages than ``max_pages`` for ``stations`` rows at least."""
        also = " and --api.max-stations" if stations >= self._max_stations else ""
        return ListingTooLargeError(
            f"charging stations of {self._host}: {what}, and one read fetches at most "
            f"{self._max_pages} pages; raise --api.page-limit{also} if the fleet is that large"
        )

    def _fetch_concurrently(
        self, walk: _Walk, offsets: range
    ) -> list[tuple[list[Station], dict[str, Any]]]:
        """The pages at ``offsets``, fetched by up to ``walk.gate.limit`` threads, in order."""
        with ThreadPoolExecutor(walk.gate.limit, thread_name_prefix="page") as pool:
            futures = [pool.submit(self._page, walk, offset) for offset in offsets]
            try:
                return [future.result() for future in futures]
            except BaseException as error:
                for future in futures:
                    future.cancel()
                # The failed future holds the error, whose traceback holds this frame and the
                # futures with the pages they read: a cycle that only a full collection frees,
                # rarely with a million stations held. Without it, the pages go with the error.
                futures.clear()
                error.__traceback__ = None
                raise

    def close(self) -> None:
        """Close the idle connections; the next request opens new ones."""
        self._session.close()

    def _page(self, walk: _Walk, offset: int) -> tuple[list[Station], dict[str, Any]]:
        """The page at ``offset`` of ``walk.limit`` rows, parsed; the stations it created are
        spent from the walk's budget. More rows than asked for break the paging contract: the
        read could not tell where the next page starts, and a server that ignores page[limit]
        could send any number of rows a page."""
        body = self._get_page(offset, walk.deadline, walk.gate, walk.limit)
        # One answer decoded at a time in the whole process: 8 MiB of JSON such as [{},{},...]
        # decodes to about 200 MB, and pages fetched at once (of one mandant or many) must not
        # multiply that. The GIL runs decoding and parsing one at a time anyway; the fetches
        # stay concurrent. A failure leaves without its traceback: the frames in it would keep
        # the decoded document alive as long as the error is held (by a future, until every
        # page of the read is done).
        with _DECODING:
            try:
                stations, pagination = self._decode_page(body, offset, walk)
            except RefreshError as e:
                raise e.with_traceback(None) from None
        known = walk.known
        created = [s for s in stations if known.get(s.id) is not s] if known else stations
        passed = walk.budget.spend(created)
        if passed:
            raise ListingTooLargeError(
                f"charging stations of {self._host}: {passed} in one refresh "
                f"({walk.budget.created} received that it did not hold before, the last at "
                f"page[offset]={offset}); raise --api.max-stations if the fleet is that large"
            )
        return stations, pagination

    def _decode_page(
        self, body: bytes, offset: int, walk: _Walk
    ) -> tuple[list[Station], dict[str, Any]]:
        """The stations and the pagination of the answer ``body`` at ``offset``."""
        try:
            document = decode_json(body)
        except ValueError:
            raise ParseError(
                f"charging stations of {self._host}: answer at page[offset]={offset} is not JSON"
            ) from None
        data = document.get("data") if isinstance(document, dict) else None
        if isinstance(data, list) and len(data) > walk.limit:
            raise PaginationError(
                f"charging stations of {self._host}: {len(data)} rows at page[offset]={offset}, "
                f"more than the page[limit]={walk.limit} asked for: the API does not keep to "
                "the paging contract"
            )
        return parse_page(document, walk.known, serial_numbers=self._serial_numbers)

    def _get_page(self, offset: int, deadline: Deadline, gate: _Gate, limit: int) -> bytes:
        """The body of the 200 JSON answer at ``offset``; other answers raise."""
        params = {"page[limit]": limit, "page[offset]": offset}
        with gate:
            form = self.header.form
            token = self._tokens.token(deadline)
            response = self._request(params, token, form, deadline, gate)
            if response.status_code == 401:
                # The token may have been revoked or expired early: one retry with a fresh one.
                self._tokens.invalidate(token)
                token = self._tokens.token(deadline)
                response = self._request(params, token, form, deadline, gate)
            other = self.header.other(form)
            if response.status_code == 401 and other is not None:
                # A fresh token refused: the API may want the other form of the header. Tried
                # once, so a token refused both ways costs three requests, never a loop.
                response = self._request(params, token, other, deadline, gate)
                if response.status_code != 200:
                    raise self._refused(form, other, response.status_code)
                form = other
            if response.status_code == 401:
                raise self._refused(form)
        if response.status_code == 200:
            self.header.works(form)
        if response.status_code == 403:
            raise AuthError(
                f"charging stations of {self._host}: forbidden (HTTP 403); check the scopes and "
                "entity restrictions of the API client",
                403,
            )
        if response.status_code != 200:
            raise ApiHttpError(
                f"charging stations of {self._host}: HTTP {response.status_code} "
                f"at page[offset]={offset}",
                response.status_code,
            )
        content_type = response.headers.get("Content-Type", "")
        if content_type and "json" not in content_type.lower():
            raise ParseError(
                f"charging stations of {self._host}: answer at page[offset]={offset} is "
                f"{content_type.split(';')[0]!r}, not JSON"
            )
        return response.body

    def _refused(self, form: str, other: str | None = None, other_status: int = 0) -> AuthError:
        """The error for a fresh token refused (HTTP 401) in ``form``, and in ``other`` with
        ``other_status`` when that was tried too."""
        if other is None:
            return AuthError(
                f"charging stations of {self._host}: a fresh token was rejected (HTTP 401) as "
                f"{shown(form)} (--api.authorization={self.header.setting}); check that the API "
                "client has a cpoapi scope, or try --api.authorization=auto",
                401,
            )
        return AuthError(
            f"charging stations of {self._host}: a fresh token was rejected (HTTP 401) as "
            f"{shown(form)}, and as {shown(other)} (HTTP {other_status}); check that the API "
            "client has a cpoapi scope",
            401,
        )

    def _request(
        self, params: dict[str, int], token: str, form: str, deadline: Deadline, gate: _Gate
    ) -> Answer:
        def on_response(endpoint: str, code: str) -> None:
            self._on_response(endpoint, code)
            if code == "429":
                gate.shrink()

        return send(
            self._session,
            "GET",
            self._url,
            endpoint="charging_stations",
            what=f"charging stations of {self._host}",
            on_response=on_response,
            deadline=deadline,
            retry=self._retry,
            limits=self._limits,
            proxies=self._proxies,
            params=params,
            headers={
                "Authorization": header_value(form, token),
                "Accept": "application/vnd.api+json, application/json",
            },
        )


def connect(
    mandant: Mandant,
    page_limit: int,
    concurrency: int,
    on_response: RequestCounter,
    clock: Callable[[], float] = time.time,
    limits: Limits = DEFAULT_LIMITS,
    serial_numbers: bool = True,
    max_stations: int = MAX_STATIONS,
    retry: RetryPolicy = DEFAULT_RETRY,
    header: HeaderForm | None = None,
) -> tuple[TokenSource, CpoClient]:
    """The token source and API client of one mandant, sharing one new HTTP session; the
    client sends the Authorization header in the form ``header`` holds (a new one of the
    mandant's setting without it)."""
    session = BoundedSession(concurrency, mandant.ca_file)
    tokens = TokenSource(
        token_url=mandant.token_url,
        client_id=mandant.client_id,
        client_secret=mandant.client_secret,
        auth_method=mandant.token_auth_method,
        session=session,
        on_response=on_response,
        retry=retry,
        limits=limits,
        clock=clock,
    )
    client = CpoClient(
        api_url=mandant.api_url,
        tokens=tokens,
        session=session,
        page_limit=page_limit,
        concurrency=concurrency,
        max_stations=max_stations,
        on_response=on_response,
        retry=retry,
        limits=limits,
        serial_numbers=serial_numbers,
        header=header or HeaderForm(mandant.authorization, mandant.name),
    )
    return tokens, client
