import json
import threading
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from exporter.api import STATIONS_PATH, CpoClient, StationBudget, _Gate
from exporter.auth import TokenSource
from exporter.authheader import HeaderForm
from exporter.errors import (
    ApiHttpError,
    ApiTimeoutError,
    AuthError,
    ListingTooLargeError,
    PaginationError,
    ParseError,
)
from exporter.http import Deadline, RetryPolicy
from exporter.model import Secret, Station
from exporter.session import BoundedSession
from exporter.stations import parse_page, parse_station
from tests.helpers import wait_until

API = "https://mandant.example.test"
STATIONS_URL = API + STATIONS_PATH
TOKEN_URL = "https://auth.example.test/token"


def row(sid: str, firmware: object = "1.0") -> dict:
    return {
        "type": "charging_stations",
        "id": sid,
        "attributes": {
            "label": f"Station {sid}",
            "chargeBoxIdentity": f"cp_{sid}",
            "iccid": "1",
            "imsi": "2",
            "serialnumber": f"SN{sid}",
            "firmwareVersion": firmware,
        },
    }


def offsets_requested() -> list[int]:
    found = []
    for call in responses.calls:
        if call.request.url.startswith(STATIONS_URL):
            query = parse_qs(urlsplit(call.request.url).query)
            found.append(int(query["page[offset]"][0]))
    return found


def serve_fleet(
    rows: list[dict], max_limit: int = 1000, *, meta: bool = True, next_factor: int = 1
):
    """A stations endpoint over ``rows`` that clamps page[limit] to ``max_limit``."""

    def callback(request):
        query = parse_qs(urlsplit(request.url).query)
        limit = min(int(query["page[limit]"][0]), max_limit)
        offset = int(query["page[offset]"][0])
        page = rows[offset : offset + limit]
        body: dict = {"data": page}
        if meta:
            last = offset + limit >= len(rows)
            body["meta"] = {
                "pagination": {
                    "total": len(rows),
                    "offset": offset,
                    "limit": limit,
                    "lastPage": last,
                }
            }
            next_offset = offset + next_factor * limit
            body["links"] = {
                "next": f"{STATIONS_URL}?page%5Blimit%5D={limit}&page%5Boffset%5D={next_offset}"
            }
        return 200, {"Content-Type": "application/vnd.api+json"}, json.dumps(body)

    responses.add_callback(
        responses.GET, STATIONS_URL, callback=callback, content_type="application/json"
    )


def make_client(
    page_limit: int = 2,
    max_pages: int = 100,
    calls=None,
    concurrency: int = 1,
    retry=None,
    max_stations: int = 1000,
    header: HeaderForm | None = None,
) -> CpoClient:
    session = BoundedSession()
    hook = (lambda e, c: calls.append((e, c))) if calls is not None else None
    tokens = TokenSource(
        token_url=TOKEN_URL,
        client_id="id",
        client_secret=Secret("secret"),
        auth_method="basic",
        session=session,
        on_response=hook,
        retry=RetryPolicy(attempts=1),  # retries are tested in test_http.py
    )
    return CpoClient(
        api_url=API + "/",
        tokens=tokens,
        session=session,
        page_limit=page_limit,
        max_pages=max_pages,
        max_stations=max_stations,
        concurrency=concurrency,
        on_response=hook,
        retry=retry or RetryPolicy(attempts=1),
        header=header,
    )


def add_tokens(*values: str) -> None:
    for value in values:
        responses.post(
            TOKEN_URL, json={"access_token": value, "expires_in": 3600, "token_type": "Bearer"}
        )


@responses.activate
def test_reads_every_page_and_sends_the_bearer_token():
    add_tokens("tok")
    serve_fleet([row(str(i)) for i in range(5)])
    stations = make_client(page_limit=2).stations(Deadline(60))
    assert [s.id for s in stations] == ["0", "1", "2", "3", "4"]
    assert offsets_requested() == [0, 2, 4]
    page_calls = [c for c in responses.calls if c.request.url.startswith(STATIONS_URL)]
    assert all(c.request.headers["Authorization"] == "Bearer tok" for c in page_calls)
    assert len(responses.calls) == 4  # one token for every page


@responses.activate
def test_ignores_the_quickstarts_skipping_next_link():
    add_tokens("tok")
    serve_fleet([row(str(i)) for i in range(10)], next_factor=10)
    stations = make_client(page_limit=1).stations(Deadline(60))
    assert len(stations) == 10
    assert offsets_requested() == list(range(10))


@responses.activate
def test_advances_by_rows_received_when_the_server_clamps_the_limit():
    add_tokens("tok")
    serve_fleet([row(str(i)) for i in range(7)], max_limit=3)
    stations = make_client(page_limit=100).stations(Deadline(60))
    assert len(stations) == 7
    assert offsets_requested() == [0, 3, 6]


@responses.activate
def test_without_pagination_meta_reads_until_an_empty_page():
    add_tokens("tok")
    serve_fleet([row(str(i)) for i in range(3)], meta=False)
    assert len(make_client(page_limit=2).stations(Deadline(60))) == 3
    assert offsets_requested() == [0, 2, 3]  # the offset moves by the rows actually received


@responses.activate
def test_stops_on_last_page_flag_even_without_total():
    add_tokens("tok")
    responses.get(
        STATIONS_URL, json={"data": [row("a")], "meta": {"pagination": {"lastPage": True}}}
    )
    assert [s.id for s in make_client().stations(Deadline(60))] == ["a"]
    assert offsets_requested() == [0]


@responses.activate
def test_a_server_that_never_ends_is_cut_off_by_the_page_bound():
    add_tokens("tok")
    counter = iter(range(10**6))

    def endless(request):
        body = {"data": [row(f"r{next(counter)}")], "meta": {"pagination": {"lastPage": False}}}
        return 200, {}, json.dumps(body)

    responses.add_callback(
        responses.GET, STATIONS_URL, callback=endless, content_type="application/json"
    )
    message = (
        r"no last page after 5 pages \(5 rows\), .* at most 5 pages; raise --api.page-limit if"
    )
    with pytest.raises(ListingTooLargeError, match=message):
        make_client(max_pages=5).stations(Deadline(60))
    assert len(offsets_requested()) == 5


@responses.activate
@pytest.mark.parametrize("total", [11, 2**65, 10**400], ids=["11", "2**65", "10**400"])
def test_a_total_of_more_pages_than_the_bound_is_refused_before_any_other_page(total):
    # over 2**63 pages made len(range(...)) raise OverflowError: "failed unexpectedly"
    add_tokens("tok")
    page = {"data": [row("a"), row("b")], "meta": {"pagination": {"total": total}}}
    responses.get(STATIONS_URL, body=json.dumps(page), content_type="application/json")
    message = rf"{total} stations in pages of 2 announced, and one read fetches at most 5 pages"
    with pytest.raises(ListingTooLargeError, match=message):
        make_client(max_pages=5, max_stations=10**500, concurrency=4).stations(Deadline(60))
    assert offsets_requested() == [0]


@responses.activate
def test_a_station_the_api_lists_twice_is_its_data_not_a_torn_read():
    add_tokens("tok")
    rows = [row("a"), row("b"), row("b"), row("c")]  # "b" straddles the page boundary
    serve_fleet(rows)
    stations = make_client(page_limit=2).stations(Deadline(60))
    assert [s.id for s in stations] == ["a", "b", "b", "c"]  # Snapshot.build keeps one "b"
    assert offsets_requested() == [0, 2, 0, 1, 2, 3]  # read again in pages of another size


@responses.activate
def test_a_row_repeated_at_every_page_boundary_is_a_torn_read():
    """A page that starts with the previous page's last row (what an insert between two page
    requests does) repeats other stations when the pages are of another size: refused."""
    add_tokens("tok")
    rows = [row(str(i)) for i in range(9)]

    def callback(request):
        query = parse_qs(urlsplit(request.url).query)
        limit, offset = int(query["page[limit]"][0]), int(query["page[offset]"][0])
        page = rows[offset : offset + limit]
        if offset:
            page[0] = rows[offset - 1]
        body = {"data": page, "meta": {"pagination": {"total": 9}}}
        return 200, {"Content-Type": "application/vnd.api+json"}, json.dumps(body)

    responses.add_callback(responses.GET, STATIONS_URL, callback=callback)
    with pytest.raises(PaginationError, match="other stations listed twice in pages of 2 than"):
        make_client(page_limit=3).stations(Deadline(60))
    assert offsets_requested() == [0, 3, 6, 0, 2, 4, 6, 8]


@responses.activate
def test_forbidden_is_an_auth_failure():
    add_tokens("tok")
    responses.get(STATIONS_URL, status=403)
    with pytest.raises(AuthError, match="HTTP 403"):
        make_client().stations(Deadline(60))


@responses.activate
def test_a_json_body_with_a_wrong_content_type_is_a_parse_error():
    add_tokens("tok")
    responses.get(STATIONS_URL, body=json.dumps({"data": []}), content_type="text/plain")
    with pytest.raises(ParseError, match="'text/plain', not JSON"):
        make_client().stations(Deadline(60))


@responses.activate
def test_on_401_the_token_is_renewed_and_the_request_retried_once():
    add_tokens("old", "new")
    calls: list = []
    responses.get(STATIONS_URL, status=401, json={"errors": [{"status": "401"}]})
    responses.get(STATIONS_URL, json={"data": [row("a")], "meta": {"pagination": {"total": 1}}})
    assert len(make_client(calls=calls).stations(Deadline(60))) == 1
    auth_headers = [
        c.request.headers["Authorization"]
        for c in responses.calls
        if c.request.url.startswith(STATIONS_URL)
    ]
    assert auth_headers == ["Bearer old", "Bearer new"]
    assert calls == [
        ("token", "200"),
        ("charging_stations", "401"),
        ("token", "200"),
        ("charging_stations", "200"),
    ]


@responses.activate
def test_a_fresh_token_refused_both_ways_is_one_auth_failure_of_three_requests():
    add_tokens("old", "new")
    responses.get(STATIONS_URL, status=401)
    with pytest.raises(AuthError) as caught:
        make_client().stations(Deadline(60))
    assert str(caught.value) == (
        "charging stations of mandant.example.test: a fresh token was rejected (HTTP 401) as "
        "Authorization: Bearer <token>, and as Authorization: <token> (HTTP 401); check that "
        "the API client has a cpoapi scope"
    )
    assert authorizations() == ["Bearer old", "Bearer new", "new"]
    assert tokens_requested() == 2


@responses.activate
def test_every_read_refused_both_ways_costs_the_same_few_requests():
    add_tokens("t1", "t2", "t3", "t4")
    responses.get(STATIONS_URL, status=401)
    client = make_client(concurrency=4)
    for _ in range(3):
        with pytest.raises(AuthError, match="fresh token was rejected"):
            client.stations(Deadline(60))
    # The cached token first, then a fresh one in both forms: three a read, never more.
    assert authorizations() == [
        *("Bearer t1", "Bearer t2", "t2"),
        *("Bearer t2", "Bearer t3", "t3"),
        *("Bearer t3", "Bearer t4", "t4"),
    ]
    assert client.header.accepted is None


@dataclass
class HeaderApi:
    """A stations endpoint that takes a token only in the header form ``accepts`` (bearer or
    raw) and not if it is ``revoked``; pages of 2 of ``rows``. Tokens come from add_tokens."""

    rows: list[dict]
    accepts: str
    revoked: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        responses.add_callback(responses.GET, STATIONS_URL, callback=self.answer)

    def answer(self, request):
        header = request.headers.get("Authorization", "")
        form = "bearer" if header.startswith("Bearer ") else "raw"
        if form != self.accepts or header.removeprefix("Bearer ") in self.revoked:
            return 401, {"Content-Type": "application/json"}, "{}"
        offset = int(parse_qs(urlsplit(request.url).query)["page[offset]"][0])
        rows = self.rows[offset : offset + 2]
        page = {"data": rows, "meta": {"pagination": {"total": len(self.rows)}}}
        return 200, {"Content-Type": "application/vnd.api+json"}, json.dumps(page)


def authorizations() -> list[str]:
    """The Authorization header of every stations request, in order."""
    return [
        c.request.headers["Authorization"]
        for c in responses.calls
        if c.request.url.startswith(STATIONS_URL)
    ]


def tokens_requested() -> int:
    return sum(c.request.url.startswith(TOKEN_URL) for c in responses.calls)


@responses.activate
def test_auto_finds_the_bare_token_and_keeps_it_for_every_later_page_and_read(caplog):
    add_tokens("t1", "t2")
    HeaderApi([row(str(i)) for i in range(5)], accepts="raw")
    client = make_client(page_limit=2)
    with caplog.at_level("INFO", logger="exporter.authheader"):
        assert len(client.stations(Deadline(60))) == 5
        assert len(client.stations(Deadline(60))) == 5
    assert authorizations() == ["Bearer t1", "Bearer t2", "t2", "t2", "t2", "t2", "t2", "t2"]
    assert tokens_requested() == 2
    assert (client.header.form, client.header.accepted) == ("raw", "raw")
    assert [r.getMessage() for r in caplog.records] == [
        "mandant mandant.example.test: the API accepts the access token as "
        "Authorization: <token> (--api.authorization=auto); sending that form from now on"
    ]


@responses.activate
def test_auto_against_an_api_that_takes_bearer_costs_no_extra_request():
    add_tokens("tok")
    HeaderApi([row(str(i)) for i in range(5)], accepts="bearer")
    client = make_client(page_limit=2)
    assert len(client.stations(Deadline(60))) == 5
    assert authorizations() == ["Bearer tok"] * 3
    assert tokens_requested() == 1
    assert client.header.accepted == "bearer"


@responses.activate
def test_a_401_to_a_cached_token_renews_it_and_does_not_change_the_form():
    """A cached token may have expired or been revoked: its 401 says nothing of the form."""
    add_tokens("t1", "t2", "t3")
    api = HeaderApi([row("a")], accepts="raw")
    client = make_client()
    client.stations(Deadline(60))
    responses.calls.reset()
    api.revoked.add("t2")
    assert len(client.stations(Deadline(60))) == 1
    assert authorizations() == ["t2", "t3"]
    assert client.header.form == "raw"


@responses.activate
def test_auto_follows_an_api_that_changes_its_form_and_logs_the_change(caplog):
    add_tokens("t1", "t2", "t3")
    api = HeaderApi([row("a")], accepts="bearer")
    client = make_client()
    client.stations(Deadline(60))
    responses.calls.reset()
    api.accepts = "raw"
    with caplog.at_level("INFO", logger="exporter.authheader"):
        assert len(client.stations(Deadline(60))) == 1
    assert authorizations() == ["Bearer t1", "Bearer t2", "t2"]
    assert client.header.form == "raw"
    assert [r.getMessage() for r in caplog.records] == [
        "mandant mandant.example.test: the API no longer accepts the access token as "
        "Authorization: Bearer <token> but as Authorization: <token> "
        "(--api.authorization=auto); sending that form from now on"
    ]


@pytest.mark.parametrize(("setting", "sent"), [("bearer", "Bearer t2"), ("raw", "t2")])
@responses.activate
def test_a_form_set_is_never_changed_and_its_refusal_names_the_setting(setting, sent):
    add_tokens("t1", "t2")
    HeaderApi([row("a")], accepts="raw" if setting == "bearer" else "bearer")
    client = make_client(header=HeaderForm(setting, "north"))
    with pytest.raises(AuthError) as caught:
        client.stations(Deadline(60))
    assert authorizations() == [sent.replace("t2", "t1"), sent]
    assert f"(--api.authorization={setting}); check that the API client" in str(caught.value)
    assert "or try --api.authorization=auto" in str(caught.value)
    assert "t1" not in str(caught.value) and "t2" not in str(caught.value)


@responses.activate
def test_the_bare_token_is_sent_when_set():
    add_tokens("tok")
    HeaderApi([row("a"), row("b"), row("c")], accepts="raw")
    client = make_client(header=HeaderForm("raw", "north"))
    assert len(client.stations(Deadline(60))) == 3
    assert authorizations() == ["tok", "tok"]


@responses.activate
def test_the_other_form_answered_otherwise_is_an_auth_failure_that_says_so():
    add_tokens("t1", "t2")
    statuses = iter([401, 401, 403])
    responses.add_callback(
        responses.GET, STATIONS_URL, callback=lambda request: (next(statuses), {}, "{}")
    )
    with pytest.raises(AuthError, match=r"and as Authorization: <token> \(HTTP 403\)"):
        make_client().stations(Deadline(60))
    assert authorizations() == ["Bearer t1", "Bearer t2", "t2"]


@responses.activate
def test_http_errors_name_the_status_and_offset():
    add_tokens("tok")
    responses.get(STATIONS_URL, status=500, body="internal server error")
    with pytest.raises(ApiHttpError, match=r"HTTP 500 at page\[offset\]=0"):
        make_client().stations(Deadline(60))


@responses.activate
def test_timeouts_are_reported_as_timeouts():
    add_tokens("tok")
    responses.get(STATIONS_URL, body=requests.ReadTimeout("read timed out"))
    with pytest.raises(ApiTimeoutError):
        make_client().stations(Deadline(60))


@responses.activate
def test_html_error_page_is_a_parse_error():
    add_tokens("tok")
    responses.get(STATIONS_URL, body="<html>502</html>", content_type="text/html")
    with pytest.raises(ParseError, match="not JSON"):
        make_client().stations(Deadline(60))


@pytest.mark.parametrize(
    "document",
    [[], {"meta": {}}, {"data": {"id": "a"}}, {"data": [1]}, {"data": [{"attributes": {}}]}],
)
def test_wrong_shapes_are_parse_errors(document):
    with pytest.raises(ParseError):
        parse_page(document)


def test_missing_and_null_attribute_values_become_empty_text():
    assert parse_station({"id": "a", "attributes": {}}).label == ""
    station = parse_station(
        {
            "id": 42,
            "attributes": {
                "label": None,
                "firmwareVersion": 3.1,
                "serialnumber": 1234,
                "unknownField": ["ignored"],
            },
        }
    )
    assert station.id == "42"
    assert station.label == ""
    assert station.charge_box_identity == ""
    assert station.firmware_version == "3.1"
    assert station.serial_number == "1234"


@pytest.mark.parametrize("attributes", [None, [], "text"])
def test_attributes_that_are_not_an_object_are_schema_drift(attributes):
    with pytest.raises(ParseError, match="attributes is"):
        parse_station({"id": "a", "attributes": attributes})
    with pytest.raises(ParseError, match="attributes is missing"):
        parse_station({"id": "a"})


@pytest.mark.parametrize("value", [["2.4"], {"v": "2.4"}, True])
def test_attribute_values_that_cannot_be_text_are_schema_drift(value):
    with pytest.raises(ParseError, match="attribute firmwareVersion is a"):
        parse_station({"id": "a", "attributes": {"firmwareVersion": value}})


def test_page_without_meta_gives_empty_pagination():
    stations, pagination = parse_page({"data": [row("a")]})
    assert [s.id for s in stations] == ["a"]
    assert pagination == {}


def changing_fleet(fleets: list[list[dict]], max_limit: int = 2):
    """A stations endpoint whose listing switches to the next fleet after every page served;
    it clamps page[limit] to ``max_limit``."""
    served = iter(range(10**6))

    def callback(request):
        query = parse_qs(urlsplit(request.url).query)
        offset = int(query["page[offset]"][0])
        limit = min(int(query["page[limit]"][0]), max_limit)
        rows = fleets[min(next(served), len(fleets) - 1)]
        body = {"data": rows[offset : offset + limit], "meta": {"pagination": {"total": len(rows)}}}
        return 200, {}, json.dumps(body)

    responses.add_callback(
        responses.GET, STATIONS_URL, callback=callback, content_type="application/json"
    )


@responses.activate
def test_a_listing_that_changes_while_read_is_read_again():
    add_tokens("tok")
    five = [row(str(i)) for i in range(5)]
    four = five[1:]
    # the first walk sees 5, then 4 rows (a station was deleted between pages); the second is stable
    changing_fleet([five, four, four, four, four, four])
    stations = make_client(page_limit=2).stations(Deadline(60))
    assert [s.id for s in stations] == ["1", "2", "3", "4"]
    assert offsets_requested() == [0, 2, 0, 2]


@responses.activate
def test_a_station_listed_twice_after_a_torn_read_is_still_taken_as_the_apis_data():
    add_tokens("tok")
    with_a = [row("a"), row("b"), row("b"), row("c"), row("d")]
    without_a = with_a[1:]
    changing_fleet([with_a, without_a])  # "a" deleted while the first read was under way
    stations = make_client(page_limit=2).stations(Deadline(60))
    assert [s.id for s in stations] == ["b", "b", "c", "d"]
    # torn, then "b" twice in pages of 2 and again in pages of 1
    assert offsets_requested() == [0, 2, 0, 2, 0, 1, 2, 3]


@responses.activate
def test_a_listing_that_keeps_changing_publishes_nothing():
    add_tokens("tok")
    fleets = [[row(str(i)) for i in range(n)] for n in range(10, 0, -1)]
    changing_fleet(fleets)
    with pytest.raises(PaginationError, match="inconsistent twice in a row"):
        make_client(page_limit=2).stations(Deadline(60))


@responses.activate
def test_an_early_last_page_that_leaves_a_gap_is_inconsistent():
    add_tokens("tok")
    page = {"data": [row("a")], "meta": {"pagination": {"total": 3, "lastPage": True}}}
    responses.get(STATIONS_URL, json=page)
    with pytest.raises(PaginationError, match="1 rows received for a total of 3"):
        make_client().stations(Deadline(60))
    assert offsets_requested() == [0, 0]


@responses.activate
@pytest.mark.parametrize("concurrency", [2, 4, 8])
def test_pages_after_the_first_are_fetched_concurrently_and_assembled_in_order(concurrency):
    add_tokens("tok")
    serve_fleet([row(str(i)) for i in range(23)], max_limit=3)
    stations = make_client(page_limit=100, concurrency=concurrency).stations(Deadline(60))
    assert [s.id for s in stations] == [str(i) for i in range(23)]
    assert offsets_requested()[0] == 0  # the first page tells the total and the page size
    assert sorted(offsets_requested()) == list(range(0, 23, 3))


@responses.activate
def test_a_concurrent_read_that_comes_out_inconsistent_is_read_again_page_by_page():
    add_tokens("tok")
    five = [row(str(i)) for i in range(5)]
    four = five[1:]
    changing_fleet([five, four, four, four, four, four])
    stations = make_client(page_limit=2, concurrency=4).stations(Deadline(60))
    assert [s.id for s in stations] == ["1", "2", "3", "4"]


@responses.activate
def test_http_429_during_a_concurrent_read_is_retried_and_halves_the_concurrency(caplog):
    add_tokens("tok")
    rows = [row(str(i)) for i in range(8)]
    answered: list[int] = []

    def callback(request):
        offset = int(parse_qs(urlsplit(request.url).query)["page[offset]"][0])
        answered.append(offset)
        if offset == 4 and answered.count(4) == 1:
            return 429, {}, "{}"
        body = {"data": rows[offset : offset + 2], "meta": {"pagination": {"total": len(rows)}}}
        return 200, {}, json.dumps(body)

    responses.add_callback(
        responses.GET, STATIONS_URL, callback=callback, content_type="application/json"
    )
    retry = RetryPolicy(attempts=3, backoff_base=0.001, backoff_cap=0.002)
    with caplog.at_level("INFO", logger="exporter.api"):
        stations = make_client(page_limit=2, concurrency=4, retry=retry).stations(Deadline(60))
    assert [s.id for s in stations] == [str(i) for i in range(8)]
    assert answered.count(4) == 2
    assert "HTTP 429: fetching at most 2 page(s) at once" in caplog.text


def test_the_gate_halves_down_to_one():
    gate = _Gate(8)
    for expected in (4, 2, 1, 1):
        gate.shrink()
        assert gate.limit == expected


def test_the_gate_lets_no_more_than_its_limit_through():
    gate = _Gate(2)
    inside = 0
    most = 0
    lock = threading.Lock()
    release = threading.Event()

    def work():
        nonlocal inside, most
        with gate:
            with lock:
                inside += 1
                most = max(most, inside)
            release.wait(5)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    wait_until(lambda: inside == 2, what="two workers inside the gate")
    release.set()
    for thread in threads:
        thread.join(5)
    assert most == 2


def test_an_unchanged_station_is_the_object_already_held():
    held = parse_station(row("a"))
    known = {"a": held}
    assert parse_station(row("a"), known) is held
    changed = parse_station(row("a", firmware="2.0"), known)
    assert changed is not held and changed.firmware_version == "2.0"


@pytest.mark.parametrize(
    ("iccid", "imsi", "has_sim_data"),
    [
        ("1", "2", True),
        ("", "2", False),
        ("1", None, False),
        (None, None, False),
        (8949, 2620, True),
    ],
)
def test_sim_data_needs_both_iccid_and_imsi(iccid, imsi, has_sim_data):
    data = row("a")
    data["attributes"] |= {"iccid": iccid, "imsi": imsi}
    assert parse_station(data).has_sim_data is has_sim_data


def test_a_station_whose_sim_data_changed_is_a_new_object():
    known = {"a": parse_station(row("a"))}
    data = row("a")
    data["attributes"]["iccid"] = ""
    assert parse_station(data, known) is not known["a"]
    assert parse_station(row("a"), known) is known["a"]


def test_without_the_info_metric_no_serial_number_is_kept():
    sent = row("a")
    station = parse_station(sent, serial_numbers=False)
    assert station.serial_number == "" and station.label == sent["attributes"]["label"]
    assert parse_station(row("a"), {"a": station}, serial_numbers=False) is station
    assert (
        parse_station(row("a"), {"a": station}).serial_number == sent["attributes"]["serialnumber"]
    )


# --- what one read and one refresh may hold ------------------------------------------------


def limits_requested() -> list[int]:
    return [
        int(parse_qs(urlsplit(call.request.url).query)["page[limit]"][0])
        for call in responses.calls
        if call.request.url.startswith(STATIONS_URL)
    ]


def serve_endless(rows_per_page=None, total=None):
    """A listing that never ends: every page full of new stations (``rows_per_page`` of them,
    else page[limit]), never a last page; ``total(offset)`` is the total a page announces."""

    def callback(request):
        query = parse_qs(urlsplit(request.url).query)
        limit, offset = int(query["page[limit]"][0]), int(query["page[offset]"][0])
        count = rows_per_page or limit
        pagination = {"lastPage": False}
        if total is not None:
            pagination["total"] = total(offset)
        body = {"data": [row(f"r{offset + n}") for n in range(count)]}
        return 200, {}, json.dumps(body | {"meta": {"pagination": pagination}})

    responses.add_callback(
        responses.GET, STATIONS_URL, callback=callback, content_type="application/json"
    )


@responses.activate
@pytest.mark.parametrize("concurrency", [1, 4])
def test_more_rows_than_page_limit_asks_for_fail_at_the_first_page(concurrency):
    add_tokens("tok")
    serve_endless(rows_per_page=101)
    message = (
        r"101 rows at page\[offset\]=0, more than the page\[limit\]=100 asked for: the API does "
        "not keep to the paging contract"
    )
    with pytest.raises(PaginationError, match=message):
        make_client(page_limit=100, concurrency=concurrency).stations(Deadline(60))
    assert offsets_requested() == [0]


@responses.activate
def test_concurrent_pages_ask_for_the_first_pages_size_and_may_not_send_more():
    add_tokens("tok")
    rows = [row(str(i)) for i in range(12)]

    def callback(request):
        query = parse_qs(urlsplit(request.url).query)
        offset = int(query["page[offset]"][0])
        size = 3 if offset == 0 else 4  # the first page is clamped, the others are not
        body = {"data": rows[offset : offset + size], "meta": {"pagination": {"total": 12}}}
        return 200, {}, json.dumps(body)

    responses.add_callback(
        responses.GET, STATIONS_URL, callback=callback, content_type="application/json"
    )
    with pytest.raises(PaginationError, match=r"4 rows at page\[offset\]=\d+, more than the "):
        make_client(page_limit=10, concurrency=4).stations(Deadline(60))
    assert limits_requested()[0] == 10
    assert set(limits_requested()[1:]) == {3}


@responses.activate
@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_listing_that_never_ends_stops_at_max_stations_and_a_page(concurrency):
    add_tokens("tok")
    serve_endless()
    message = (
        r"more than 10 stations in one refresh \(12 received that it did not hold before, "
        r"the last at page\[offset\]=9\); raise --api.max-stations"
    )
    with pytest.raises(ListingTooLargeError, match=message):
        make_client(page_limit=3, max_stations=10, concurrency=concurrency).stations(Deadline(60))
    assert offsets_requested() == [0, 3, 6, 9]


@responses.activate
def test_a_listing_of_known_stations_without_end_stops_at_max_stations_and_a_page():
    """Stations already held cost the budget nothing: the rows of a read are bounded apart."""
    add_tokens("tok")
    serve_endless()
    known = {f"r{n}": parse_station(row(f"r{n}")) for n in range(20)}
    with pytest.raises(ListingTooLargeError, match=r"more than 10 stations listed \(12 rows "):
        make_client(page_limit=3, max_stations=10).stations(Deadline(60), known)
    assert offsets_requested() == [0, 3, 6, 9]


@responses.activate
def test_a_fleet_of_exactly_max_stations_is_read():
    add_tokens("tok")
    serve_fleet([row(str(i)) for i in range(10)])
    client = make_client(page_limit=3, max_stations=10, concurrency=4)
    assert len(client.stations(Deadline(60))) == 10
    responses.calls.reset()
    serve_fleet([row(str(i)) for i in range(10)], meta=False)  # ends with an empty page
    assert len(make_client(page_limit=3, max_stations=10).stations(Deadline(60))) == 10


@responses.activate
@pytest.mark.parametrize("total", [11, 10**9])
def test_a_total_above_max_stations_fails_at_the_first_page(total):
    add_tokens("tok")
    serve_endless(total=lambda offset: total)
    message = (
        rf"the API announces {total} stations, more than a refresh may hold \(10\); raise "
        "--api.max-stations"
    )
    with pytest.raises(ListingTooLargeError, match=message):
        make_client(page_limit=3, max_stations=10, concurrency=4).stations(Deadline(60))
    assert offsets_requested() == [0]


@responses.activate
@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_total_that_grows_with_every_page_stops_the_read_at_once(concurrency):
    """Always one page more to come: each read stops at its second page, torn."""
    add_tokens("tok")
    serve_endless(total=lambda offset: offset + 6)
    with pytest.raises(PaginationError, match=r"inconsistent twice in a row \(total went from"):
        make_client(page_limit=3, concurrency=concurrency).stations(Deadline(60))
    assert offsets_requested() == [0, 3, 0, 3]


@responses.activate
def test_more_rows_than_the_total_stop_the_read_at_once():
    add_tokens("tok")
    serve_endless(total=lambda offset: 4)
    with pytest.raises(PaginationError, match=r"6 rows received for a total of 4\)"):
        make_client(page_limit=3).stations(Deadline(60))
    assert offsets_requested() == [0, 3, 0, 3]


@responses.activate
def test_the_budget_of_a_refresh_counts_new_stations_over_its_reads():
    """A listing that shows a new fleet in each read fills the budget on the second read;
    a read of stations already held spends nothing."""
    add_tokens("tok")
    fleets = iter([[row(f"a{n}") for n in range(6)], [row(f"b{n}") for n in range(6)]])
    current: list = []

    def callback(request):
        offset = int(parse_qs(urlsplit(request.url).query)["page[offset]"][0])
        if offset == 0:
            current[:] = next(fleets)
        body = {"data": current[offset : offset + 3], "meta": {"pagination": {"total": 6}}}
        return 200, {}, json.dumps(body)

    responses.add_callback(
        responses.GET, STATIONS_URL, callback=callback, content_type="application/json"
    )
    client = make_client(page_limit=3, max_stations=10)
    budget = client.budget()
    first = client.stations(Deadline(60), None, budget)
    assert budget.created == 6
    with pytest.raises(ListingTooLargeError, match=r"more than 10 stations in one refresh \(12 "):
        client.stations(Deadline(60), None, budget)
    assert offsets_requested() == [0, 3, 0, 3]
    again = StationBudget(10)
    responses.calls.reset()
    fleets = iter([[row(f"a{n}") for n in range(6)]])
    held = {station.id: station for station in first}
    assert client.stations(Deadline(60), held, again) == first
    assert again.created == 0


@responses.activate
def test_a_listing_past_both_the_page_and_the_station_bound_names_both_settings():
    add_tokens("tok")
    serve_endless()
    message = (
        r"no last page after 3 pages \(9 rows\), .*raise --api.page-limit and --api.max-stations"
    )
    with pytest.raises(ListingTooLargeError, match=message):
        make_client(page_limit=3, max_pages=3, max_stations=9).stations(Deadline(60))


@responses.activate
def test_a_total_that_needs_more_pages_than_a_read_fetches_fails_at_the_first_page():
    add_tokens("tok")
    serve_fleet([row(str(i)) for i in range(20)])
    message = r"20 stations in pages of 3 announced, .* at most 6 pages; raise --api.page-limit if"
    with pytest.raises(ListingTooLargeError, match=message):
        make_client(page_limit=3, max_pages=6, concurrency=4).stations(Deadline(60))
    assert offsets_requested() == [0]


def fat_row(sid: str) -> dict:
    """A station of the longest, widest text the parser keeps (256 characters outside the
    Basic Multilingual Plane in every text): about 5,400 bytes held, not 340."""
    wide = "\U0001f600" * 256
    attributes = {"label": wide, "chargeBoxIdentity": wide, "serialnumber": wide}
    return row(sid, firmware=wide + sid) | {"attributes": row(sid)["attributes"] | attributes}


@responses.activate
def test_stations_of_the_widest_text_are_bounded_by_bytes_not_only_by_count():
    """A million such stations would take 5 GB: the text a refresh creates is bounded by
    --api.max-stations x BYTES_PER_STATION too, and ordinary stations never reach it."""
    from exporter.api import BYTES_PER_STATION

    add_tokens("tok", "tok")
    serve_fleet([fat_row(f"f{n}") for n in range(200)], max_limit=10)
    budget = StationBudget(200)
    with pytest.raises(ListingTooLargeError, match=r"more than 0 MB of station text \(400 bytes"):
        make_client(page_limit=10, max_stations=200).stations(Deadline(60), None, budget)
    assert budget.created < 200
    assert budget.created_bytes > 200 * BYTES_PER_STATION

    responses.reset()
    add_tokens("tok")
    serve_fleet([row(f"ordinary-{n:04d}-with-a-longer-id") for n in range(1000)], max_limit=100)
    ordinary = StationBudget(1000)
    stations = make_client(page_limit=100, max_stations=1000).stations(Deadline(60), None, ordinary)
    assert len(stations) == 1000
    assert ordinary.created_bytes < 1000 * BYTES_PER_STATION * 0.8


@responses.activate
def test_pages_fetched_at_once_are_decoded_one_at_a_time():
    """A page of [{},{},...] decodes to about 24 times its size: pages fetched concurrently
    must not hold their decoded documents at once (8 pages of 1 MiB: 8 x 24 MB)."""
    import threading
    import tracemalloc

    body = json.dumps({"data": [{}] * 350_000, "meta": {"pagination": {"total": 8000}}})
    add_tokens("tok")
    arrived = threading.Barrier(8, timeout=10)

    def callback(request):
        query = parse_qs(urlsplit(request.url).query)
        if int(query["page[offset]"][0]) == 0:
            return (
                200,
                {},
                json.dumps(
                    {
                        "data": [row(str(n)) for n in range(1000)],
                        "meta": {"pagination": {"total": 9000}},
                    }
                ),
            )
        arrived.wait()  # the eight other pages are all in before any is decoded
        return 200, {}, body

    responses.add_callback(
        responses.GET, STATIONS_URL, callback=callback, content_type="application/vnd.api+json"
    )
    client = make_client(page_limit=1000, concurrency=8, max_stations=10_000)
    tracemalloc.start()
    try:
        single = tracemalloc.get_traced_memory()[0]
        json.loads(body)
        one_decode = tracemalloc.get_traced_memory()[1] - single
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        with pytest.raises(PaginationError, match="350000 rows at page"):
            client.stations(Deadline(60))
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * one_decode, (peak, one_decode)


@responses.activate
def test_the_pages_of_a_failed_concurrent_read_go_with_the_error_not_with_a_full_collection():
    """With a million stations held, the cyclic collector seldom runs a full collection: pages
    kept in a cycle by the error would stay for many refreshes (measured: 290 MB more a
    refused read of the widest stations)."""
    import gc

    add_tokens("tok")

    def callback(request):
        query = parse_qs(urlsplit(request.url).query)
        offset = int(query["page[offset]"][0])
        if offset == 300:
            return 503, {}, "{}"
        rows = [row(f"cycle-{offset + n}") for n in range(100)]
        return 200, {}, json.dumps({"data": rows, "meta": {"pagination": {"total": 1000}}})

    responses.add_callback(
        responses.GET, STATIONS_URL, callback=callback, content_type="application/json"
    )
    client = make_client(
        page_limit=100, concurrency=4, retry=RetryPolicy(attempts=1), max_stations=10_000
    )
    gc.collect()
    gc.disable()
    try:
        with pytest.raises(ApiHttpError):
            client.stations(Deadline(60))
        left = sum(isinstance(o, Station) and o.id.startswith("cycle-") for o in gc.get_objects())
    finally:
        gc.enable()
    assert left == 0


@responses.activate
@pytest.mark.parametrize(
    ("answers", "error", "status"),
    [([403], AuthError, 403), ([500], ApiHttpError, 500), ([401, 401, 403], AuthError, 401)],
)
def test_a_refusal_of_the_api_carries_its_http_status(answers, error, status):
    add_tokens("t1", "t2")
    statuses = iter(answers)
    responses.add_callback(
        responses.GET, STATIONS_URL, callback=lambda request: (next(statuses), {}, "{}")
    )
    with pytest.raises(error) as caught:
        make_client().stations(Deadline(60))
    assert caught.value.status == status
