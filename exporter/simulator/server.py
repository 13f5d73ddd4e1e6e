"""The simulator's server: the two documented CPO API endpoints (OAuth2 token, JSON:API
charging stations) and the unauthenticated ``/_sim/`` control API, over HTTP(S) on loopback in
daemon threads. A demo needs this and the inventory only: the fault module is loaded when the
first fault is added."""

from __future__ import annotations

import base64
import json
import math
import secrets
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, parse_qs, unquote_plus, urlsplit

from exporter.simulator.httpd import Server
from exporter.simulator.inventory import Inventory, custom_stations
from exporter.simulator.wire import (
    CONTROL_PREFIX,
    JSON_API,
    STATIONS_PATH,
    TOKEN_PATH,
    Request,
    Response,
    api_error,
)

if TYPE_CHECKING:
    from exporter.simulator.faults import Fault

OTHER_ORIGIN_STATIONS = 3
AUTHORIZATION_FORMS = ("any", "bearer", "raw")
"""What the stations endpoint may demand of the Authorization header: ``Bearer <token>``
(bearer), the bare token as the quickstart's curl sends it (raw), or either (any)."""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One API request as the simulator saw it (no headers, so no tokens). Status 0: the
    connection was closed without a response (a hang fault)."""

    method: str
    path: str
    status: int


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
        authorization: str = "any",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """With ``tls_cert_file`` and ``tls_key_file`` (PEM) it serves HTTPS, e.g. with a
        certificate of a private CA that the client does not trust by default.
        ``authorization`` is the form of the header it demands (AUTHORIZATION_FORMS)."""
        if max_page_limit < 1 or default_page_limit < 1:
            raise ValueError("max_page_limit and default_page_limit must be >= 1")
        if authorization not in AUTHORIZATION_FORMS:
            raise ValueError(f"authorization must be one of {AUTHORIZATION_FORMS}")
        self.inventory = inventory
        self.latency = latency
        self._address = (host, port)
        self._client = (client_id, client_secret)
        self._token_ttl = token_ttl
        self._max_page_limit = max_page_limit
        self._default_page_limit = default_page_limit
        self._quickstart_next_links = quickstart_next_links
        self._churn_interval = churn_interval
        self._authorization = authorization
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
        self._reads = 0  # stations requests at page[offset]=0: the reads of the listing begun
        # Set to end the current hangs and latency faults; replaced by a fresh one on clear.
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._server: Server | None = None
        self._threads: list[threading.Thread] = []
        self._secret_received = 0
        self._other: Simulator | None = None  # the other origin of redirect faults
        self._open = False  # serve stations without a token (the other origin does)

    def start(self) -> Simulator:
        """Bind (port 0 picks a free port) and serve in daemon threads; return self."""
        self._server = Server(self._address, self._respond)
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
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{self._server.server_name}:{self._server.server_port}"

    @property
    def token_url(self) -> str:
        return self.api_url + TOKEN_PATH

    @property
    def client(self) -> tuple[str, str]:
        """The client id and the secret the token endpoint accepts now."""
        return self._client

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

    def _respond(self, request: Request) -> Response:
        """The one place every request passes through (and where per-request hooks belong)."""
        url = urlsplit(request.path)
        if url.path.startswith(CONTROL_PREFIX):
            return self._control(request.method, url.path, request.body)
        if self.latency > 0:
            time.sleep(self.latency)
        endpoint = _ENDPOINTS.get((request.method, url.path.rstrip("/")))
        if endpoint is None:
            response = api_error(404, "Not Found")
        else:
            fault, wake = self._take_fault(endpoint)
            if fault is None:
                response = self.answer(endpoint, request, url, None)
            else:
                response = fault.respond(self, endpoint, request, url, wake)
        with self._lock:
            self._requests.append(RequestRecord(request.method, request.path, response.status))
        return response

    def answer(
        self, endpoint: str, request: Request, url: SplitResult, fault: Fault | None
    ) -> Response:
        """The normal answer; ``fault`` may list and reshape a stations page."""
        if endpoint == "token":
            return self._token(request, url)
        return self._stations(request, url, fault)

    def _token(self, request: Request, url: SplitResult) -> Response:
        params = parse_qs(url.query)
        if request.headers.get_content_type() == "application/x-www-form-urlencoded":
            params |= parse_qs(request.body.decode("utf-8", "replace"))
        if not self._client_matches(request.headers.get("Authorization", ""), params):
            return Response(401, {"error": "invalid_client"})
        with self._lock:
            self._secret_received += 1
        if _first(params, "grant_type") != "client_credentials":
            return Response(400, {"error": "unsupported_grant_type"})
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = self._clock() + self._token_ttl
            self._issued.append(token)
        body = {
            "access_token": token,
            "expires_in": math.ceil(self._token_ttl),
            "token_type": "Bearer",
        }
        return Response(200, body)

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
        """Accept a valid token in the form demanded: ``Bearer <token>`` (bearer), the bare
        token as the quickstart's curl sends it (raw), or either (any)."""
        scheme, _, rest = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and self._authorization != "raw":
            token = rest.strip()
        elif self._authorization != "bearer":
            token = authorization.strip()  # raw: "Bearer <token>" is no token
        else:
            return False
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and self._clock() < expiry

    def _stations(self, request: Request, url: SplitResult, fault: Fault | None) -> Response:
        if not self._open and not self._authorized(request.headers.get("Authorization", "")):
            return api_error(401, "Unauthorized")
        query = parse_qs(url.query, keep_blank_values=True)
        try:
            limit = _page_param(query, "page[limit]", self._default_page_limit, minimum=1)
            offset = _page_param(query, "page[offset]", 0, minimum=0)
        except ValueError as exc:
            return api_error(400, "Bad Request", str(exc))
        limit = min(limit, self._max_page_limit)
        with self._lock:
            self._reads += offset == 0
            read = self._reads
        if fault is None:
            rows, total = self.inventory.page(offset, limit)
        else:
            rows, total = fault.rows(self.inventory, offset, limit, read)
        last_page = offset + limit >= total
        links = {"current": self._page_url(limit, offset)}
        if not last_page:
            # The quickstart's sample links offset 10 after a page of limit 1.
            step = 10 * limit if self._quickstart_next_links else limit
            links["next"] = self._page_url(limit, offset + step)
        pagination = {"total": total, "offset": offset, "limit": limit, "lastPage": last_page}
        document = {"data": rows, "meta": {"pagination": pagination}, "links": links}
        return Response(200, document if fault is None else fault.page(document), JSON_API)

    def _page_url(self, limit: int, offset: int) -> str:
        return f"{self.api_url}{STATIONS_PATH}?page%5Blimit%5D={limit}&page%5Boffset%5D={offset}"

    def _control(self, method: str, path: str, raw_body: bytes) -> Response:
        try:
            body = json.loads(raw_body or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the request body must be a JSON object")
            action = path.removeprefix(CONTROL_PREFIX).rstrip("/")
            return self._control_action(method, action, body)
        except ValueError as exc:
            return Response(400, {"error": str(exc)})

    def _control_action(self, method: str, action: str, body: dict[str, Any]) -> Response:
        route = self._control_routes().get((method, action))
        if route is None:
            return Response(
                404, {"error": f"no control endpoint {method} {CONTROL_PREFIX}{action}"}
            )
        return Response(200, route(body))

    def _control_routes(self) -> dict[tuple[str, str], Callable[[dict[str, Any]], Any]]:
        """The control endpoints: (method, path under /_sim/) -> the answer to a JSON body."""
        return {
            ("GET", "state"): lambda _: self._state(),
            ("GET", "requests"): lambda _: [asdict(record) for record in self.requests],
            ("GET", "tokens"): lambda _: self.tokens,
            ("GET", "history"): lambda _: {"fingerprints": self.inventory.history()},
            ("GET", "credentials"): lambda _: self._credentials(),
            ("POST", "client_secret"): self._rotate_secret,
            ("POST", "revoke_tokens"): lambda _: {"revoked": self.revoke_tokens()},
            ("POST", "latency"): self._set_latency,
            ("POST", "inventory"): self._change_inventory,
            ("GET", "faults"): lambda _: {"faults": self.faults},
            ("POST", "faults"): self._add_fault,
            ("DELETE", "faults"): lambda _: {"cleared": self._clear_faults()},
            ("POST", "faults/clear"): lambda _: {"cleared": self._clear_faults()},
        }

    def _state(self) -> dict[str, Any]:
        with self._lock:
            tokens_issued, requests = len(self._issued), len(self._requests)
        return {
            "stations": len(self.inventory),
            "tokens_issued": tokens_issued,
            "firmware": self.inventory.firmware_counts(),
            "requests": requests,
        }

    def _credentials(self) -> dict[str, Any]:
        with self._lock:
            other = self._other.api_url if self._other else None
            return {"secret_received": self._secret_received, "other_origin": other}

    def _rotate_secret(self, body: dict[str, Any]) -> dict[str, bool]:
        secret = body.get("client_secret")
        if not isinstance(secret, str) or not secret:
            raise ValueError("client_secret must be a non-empty string")
        with self._lock:
            self._client = (self._client[0], secret)
        return {"rotated": True}

    def _set_latency(self, body: dict[str, Any]) -> dict[str, float]:
        seconds = body.get("seconds")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
            raise ValueError(f"seconds must be a number >= 0, got {seconds!r}")
        self.latency = float(seconds)
        return {"latency": self.latency}

    def _add_fault(self, body: dict[str, Any]) -> dict[str, int]:
        # Here, not at the top: a demo that adds no fault never loads the fault module.
        from exporter.simulator.faults import Fault

        return {"id": self.add_fault(Fault.from_json(body))}

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
        rename = _count_field(body, "rename")
        count = _count_field(rollout, "count")
        stations = body.get("stations", [])
        custom_stations(stations)  # checked before anything changes
        with self.inventory.lock:  # clients see all of the change or none of it
            added = self.inventory.add(add)
            removed = self.inventory.remove(remove)
            rolled_out = (
                self.inventory.rollout(to_version, count, from_version)
                if isinstance(to_version, str)
                else []
            )
            renamed = self.inventory.rename(rename)
            added += self.inventory.add_custom(stations)
        return {"added": added, "removed": removed, "rolled_out": rolled_out, "renamed": renamed}
