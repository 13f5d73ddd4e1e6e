"""A be.ENERGISED CPO API double for the exporter's --demo mode, the tests and the benchmarks.

It serves the two documented endpoints (OAuth2 token, JSON:API charging stations) plus
unauthenticated ``/_sim/`` control endpoints, on loopback only, from the standard library alone.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import random
import secrets
import signal
import socket
import socketserver
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import SplitResult, parse_qs, unquote_plus, urlsplit

FIRMWARE_MIX: dict[str, float] = {"2.4.1": 0.6, "2.5.0": 0.3, "3.0.0-rc1": 0.1}

TOKEN_PATH = "/oauth2/token"
STATIONS_PATH = "/api/cpoapi/v1/charging_stations/"
CONTROL_PREFIX = "/_sim/"
JSON = "application/json"
JSON_API = "application/vnd.api+json"


def _version_key(version: str) -> tuple[tuple[int, ...], bool, str]:
    """Order versions like "2.4.1" < "3.0.0-rc1" < "3.0.0"."""
    release, _, pre = version.partition("-")
    numbers = tuple(int(part) if part.isdigit() else 0 for part in release.split("."))
    return numbers, not pre, pre


def _check_count(count: int) -> None:
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")


def _copy(station: dict[str, Any]) -> dict[str, Any]:
    return {**station, "attributes": dict(station["attributes"])}


class Inventory:
    """Thread-safe, deterministic (seeded) station inventory."""

    def __init__(
        self, size: int = 25, firmware_mix: Mapping[str, float] | None = None, seed: int = 0
    ) -> None:
        mix = dict(FIRMWARE_MIX if firmware_mix is None else firmware_mix)
        if not mix or any(weight < 0 for weight in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError(f"firmware_mix needs non-negative weights with a positive sum: {mix}")
        self._mix = mix
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._stations: list[dict[str, Any]] = []
        self._serial = 0
        self.add(size)

    def _new_station(self) -> dict[str, Any]:
        rng = self._rng
        self._serial += 1
        firmware = rng.choices(list(self._mix), weights=list(self._mix.values()))[0]
        return {
            "type": "charging_stations",
            "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "attributes": {
                "label": f"Station {self._serial}",
                "chargeBoxIdentity": f"cp_{self._serial}",
                "iccid": f"8949{rng.randrange(10**15):015d}",
                "imsi": f"26201{rng.randrange(10**10):010d}",
                "serialnumber": f"SN{rng.randrange(10**8):08d}",
                "firmwareVersion": firmware,
            },
        }

    def add(self, count: int) -> list[str]:
        """Add ``count`` stations drawn from the firmware mix; return their ids."""
        _check_count(count)
        with self._lock:
            new = [self._new_station() for _ in range(count)]
            self._stations.extend(new)
            return [station["id"] for station in new]

    def remove(self, count: int) -> list[str]:
        """Remove up to ``count`` randomly chosen stations; return their ids."""
        _check_count(count)
        with self._lock:
            gone = self._rng.sample(self._stations, min(count, len(self._stations)))
            gone_ids = [station["id"] for station in gone]
            removed = set(gone_ids)
            self._stations = [s for s in self._stations if s["id"] not in removed]
            return gone_ids

    def rollout(self, to_version: str, count: int, from_version: str | None = None) -> list[str]:
        """Move up to ``count`` stations (optionally only those on ``from_version``) to
        ``to_version``; return the ids whose firmwareVersion changed."""
        _check_count(count)
        with self._lock:
            candidates = [
                station
                for station in self._stations
                if station["attributes"]["firmwareVersion"] != to_version
                and from_version in (None, station["attributes"]["firmwareVersion"])
            ]
            return self._move(candidates, count, to_version)

    def _move(self, candidates: list[dict[str, Any]], count: int, to_version: str) -> list[str]:
        chosen = self._rng.sample(candidates, min(count, len(candidates)))
        for station in chosen:
            station["attributes"]["firmwareVersion"] = to_version
        return [station["id"] for station in chosen]

    def stations(self) -> list[dict[str, Any]]:
        """Copies of all JSON:API resource objects, in creation order."""
        with self._lock:
            return [_copy(station) for station in self._stations]

    def page(self, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """One consistent slice of the inventory and the total at that moment."""
        with self._lock:
            rows = self._stations[offset : offset + limit]
            return [_copy(station) for station in rows], len(self._stations)

    @property
    def lock(self) -> threading.RLock:
        """Hold it to make several changes appear to readers as one."""
        return self._lock

    def firmware_counts(self) -> dict[str, int]:
        """Number of stations per firmware version."""
        with self._lock:
            return dict(Counter(s["attributes"]["firmwareVersion"] for s in self._stations))

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
                if _version_key(station["attributes"]["firmwareVersion"]) < _version_key(target)
            ]
            self._move(older, self._rng.randint(1, 3), target)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One API request as the simulator saw it (no headers, so no tokens)."""

    method: str
    path: str
    status: int


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    headers: Message
    body: bytes


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: Any
    content_type: str = JSON


def _api_error(status: int, title: str, detail: str | None = None) -> _Response:
    error = {"status": str(status), "title": title}
    if detail:
        error["detail"] = detail
    return _Response(status, {"errors": [error]}, JSON_API)


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
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
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}
        self._tokens_issued = 0
        self._requests: list[RequestRecord] = []
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> Simulator:
        """Bind (port 0 picks a free port) and serve in daemon threads; return self."""
        self._server = _Server(self._address, self)
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
        """Stop serving, drop open connections and end the churn thread, in bounded time."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
        for thread in self._threads:
            thread.join(timeout=5)

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
        return f"http://{host}:{port}"

    @property
    def token_url(self) -> str:
        return self.api_url + TOKEN_PATH

    @property
    def tokens_issued(self) -> int:
        with self._lock:
            return self._tokens_issued

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the log of API requests (control requests are not logged)."""
        with self._lock:
            return list(self._requests)

    def revoke_tokens(self) -> int:
        """Invalidate every token issued so far; return how many there were."""
        with self._lock:
            revoked = len(self._tokens)
            self._tokens.clear()
            return revoked

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
        route = (request.method, url.path.rstrip("/"))
        if route == ("POST", TOKEN_PATH):
            response = self._token(request, url)
        elif route == ("GET", STATIONS_PATH.rstrip("/")):
            response = self._stations(request, url)
        else:
            response = _api_error(404, "Not Found")
        with self._lock:
            self._requests.append(RequestRecord(request.method, request.path, response.status))
        return response

    def _token(self, request: _Request, url: SplitResult) -> _Response:
        params = parse_qs(url.query)
        if request.headers.get_content_type() == "application/x-www-form-urlencoded":
            params |= parse_qs(request.body.decode("utf-8", "replace"))
        if not self._client_matches(request.headers.get("Authorization", ""), params):
            return _Response(401, {"error": "invalid_client"})
        if _first(params, "grant_type") != "client_credentials":
            return _Response(400, {"error": "unsupported_grant_type"})
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = self._clock() + self._token_ttl
            self._tokens_issued += 1
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

    def _stations(self, request: _Request, url: SplitResult) -> _Response:
        if not self._authorized(request.headers.get("Authorization", "")):
            return _api_error(401, "Unauthorized")
        query = parse_qs(url.query, keep_blank_values=True)
        try:
            limit = _page_param(query, "page[limit]", self._default_page_limit, minimum=1)
            offset = _page_param(query, "page[offset]", 0, minimum=0)
        except ValueError as exc:
            return _api_error(400, "Bad Request", str(exc))
        limit = min(limit, self._max_page_limit)
        rows, total = self.inventory.page(offset, limit)
        last_page = offset + limit >= total
        links = {"current": self._page_url(limit, offset)}
        if not last_page:
            # The quickstart's sample links offset 10 after a page of limit 1.
            step = 10 * limit if self._quickstart_next_links else limit
            links["next"] = self._page_url(limit, offset + step)
        pagination = {"total": total, "offset": offset, "limit": limit, "lastPage": last_page}
        return _Response(
            200, {"data": rows, "meta": {"pagination": pagination}, "links": links}, JSON_API
        )

    def _page_url(self, limit: int, offset: int) -> str:
        return f"{self.api_url}{STATIONS_PATH}?page%5Blimit%5D={limit}&page%5Boffset%5D={offset}"

    def _control(self, method: str, path: str, raw_body: bytes) -> _Response:
        try:
            body = json.loads(raw_body or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the request body must be a JSON object")
            return self._control_action(method, path.removeprefix(CONTROL_PREFIX), body)
        except ValueError as exc:
            return _Response(400, {"error": str(exc)})

    def _control_action(self, method: str, action: str, body: dict[str, Any]) -> _Response:
        if (method, action) == ("GET", "state"):
            with self._lock:
                tokens_issued, requests = self._tokens_issued, len(self._requests)
            state = {
                "stations": len(self.inventory),
                "tokens_issued": tokens_issued,
                "firmware": self.inventory.firmware_counts(),
                "requests": requests,
            }
            return _Response(200, state)
        if (method, action) == ("GET", "requests"):
            return _Response(200, [asdict(record) for record in self.requests])
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
        with self.inventory.lock:  # clients see all of the change or none of it
            added = self.inventory.add(add)
            removed = self.inventory.remove(remove)
            rolled_out = self.inventory.rollout(to_version, count, from_version) if rollout else []
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

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        response = self.server.simulator._respond(
            _Request(self.command, self.path, self.headers, body)
        )
        payload = json.dumps(response.body).encode()
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except ConnectionError:  # the client gave up (e.g. its timeout was shorter than latency)
            self.close_connection = True

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
    )
    with simulator:
        print(f"simulator listening on {simulator.api_url}", flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
