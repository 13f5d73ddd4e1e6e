"""The HTTP side: /metrics, /changes, /healthz, /readyz, /-/reload and a landing page at /, as a
WSGI app.

Nothing here calls the remote API: every page reads the latest published mandant states.
TLS and basic auth come from the web config file (:mod:`exporter.webconfig`).
"""

from __future__ import annotations

import html
import json
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs

from exporter import __version__
from exporter.exposition import Body, Exposition
from exporter.lifecycle import ReloadResult
from exporter.model import CHANGE_KINDS, MandantState
from exporter.refused import RefusedRequests
from exporter.stationchanges import ChangeEntry, StationChanges
from exporter.webauth import BasicAuth, TooManyLogins, WebConfig
from exporter.webserver import DEFAULT_LIMITS, Server, ServerLimits

LOG = logging.getLogger(__name__)

REALM = "beenergised-exporter"
_UNAUTHORIZED_HEADERS = [
    ("Content-Type", "text/plain; charset=utf-8"),
    ("WWW-Authenticate", f'Basic realm="{REALM}"'),
]

StartResponse = Callable[..., Any]

DEFAULT_CHANGES_LIMIT = 100
"""Entries ``/changes`` returns without a ``limit`` parameter."""
LANDING_CHANGES = 10
"""Latest changes shown on the landing page."""
_CHANGES_PARAMETERS = ("mandant", "kind", "limit")
_MAX_LIMIT_DIGITS = 9
"""Longer ``limit`` texts are refused before int() (which refuses over 4,300 digits)."""
_METHODS = "GET, HEAD"
_RELOAD_METHODS = ("POST", "PUT")  # as Prometheus' lifecycle API
_TEXT = "text/plain; charset=utf-8"
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")  # RFC 9110, 12.4.2
_JSON_HEADERS = [("Content-Type", "application/json")]
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


class BadRequest(ValueError):
    """A query parameter the endpoint cannot use; the message tells what to send instead."""


class ExporterApp:
    """WSGI application serving the exporter's endpoints."""

    def __init__(
        self,
        exposition: Exposition,
        states: Callable[[], Sequence[MandantState]],
        station_changes: StationChanges,
        *,
        telemetry_path: str = "/metrics",
        auth: BasicAuth | None = None,
        refused: RefusedRequests | None = None,
        reload: Callable[[], ReloadResult] | None = None,
    ) -> None:
        """``reload``: what POST /-/reload runs (--web.enable-lifecycle); None answers 403."""
        self._exposition = exposition
        self.refused = refused or RefusedRequests()
        """Requests refused, by the app (basic auth) and by the server it runs in."""
        self._states = states
        self._station_changes = station_changes
        self._telemetry_path = telemetry_path
        self._auth = auth
        self._reload = reload

    def set_users(self, users: Mapping[str, bytes]) -> None:
        """Check requests against other users from now on (a reloaded web config); none
        turns basic auth off."""
        self._auth = BasicAuth(users, like=self._auth) if users else None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Answer one request; HEAD gets GET's status and headers without the body, and an
        unexpected error a plain 500 (the traceback goes to the log only)."""
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            body = self._answer(environ, start_response)
        except Exception:
            LOG.error("error answering %s %s", method, environ.get("PATH_INFO", "/"), exc_info=True)
            body = _respond(
                start_response, "500 Internal Server Error", b"internal error\n", exc=True
            )
        return () if method == "HEAD" else body

    def _answer(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/") or "/"
        # Liveness probes carry no credentials; everything else needs them when users are set.
        public = path == "/healthz" and path != self._telemetry_path
        if not public and self._auth is not None:
            refusal = self._refusal(self._auth, environ, start_response)
            if refusal is not None:
                return refusal
        if path == "/-/reload":
            return self._lifecycle(environ.get("REQUEST_METHOD", "GET"), start_response)
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _respond(
                start_response,
                "405 Method Not Allowed",
                b"method not allowed\n",
                [("Content-Type", "text/plain; charset=utf-8"), ("Allow", _METHODS)],
            )
        return self._page(path, environ, start_response)

    def _refusal(
        self, auth: BasicAuth, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes] | None:
        """Basic auth's answer to a request without the right credentials (401), or to one
        whose check cannot run soon (429); None to a request it lets in."""
        try:
            allowed = auth.check(environ.get("HTTP_AUTHORIZATION"), environ.get("REMOTE_ADDR", ""))
        except TooManyLogins as error:
            self.refused.record("recent_wrong_password" if error.suspect else "too_many_logins")
            LOG.debug("429: %s", error)
            return _respond(
                start_response,
                "429 Too Many Requests",
                b"too many logins at once; try again\n",
                [("Content-Type", "text/plain; charset=utf-8"), ("Retry-After", "1")],
            )
        if allowed:
            return None
        self.refused.record("unauthorized")
        return _respond(
            start_response, "401 Unauthorized", b"unauthorized\n", _UNAUTHORIZED_HEADERS
        )

    def _page(
        self, path: str, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        """The answer to GET (or HEAD) ``path``."""
        if path == self._telemetry_path:
            return self._metrics(environ, start_response)
        if path == "/healthz":
            return _respond(start_response, "200 OK", b"ok\n")
        if path == "/readyz":
            return self._ready(start_response)
        if path == "/changes":
            return self._changes(environ.get("QUERY_STRING", ""), start_response)
        if path == "/":
            return self._landing(start_response)
        return _respond(start_response, "404 Not Found", b"not found\n")

    def _metrics(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        openmetrics = accepts_openmetrics(environ.get("HTTP_ACCEPT", ""))
        gzipped = accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", ""))
        body = self._exposition.body(openmetrics=openmetrics, gzipped=gzipped)
        headers = [("Content-Type", OPENMETRICS if openmetrics else TEXT_FORMAT)]
        if gzipped:
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Vary", "Accept, Accept-Encoding"))
        return _respond(start_response, "200 OK", body, headers)

    def _lifecycle(self, method: str, start_response: StartResponse) -> Iterable[bytes]:
        """POST /-/reload as Prometheus answers it: 405 to other methods, 403 unless enabled;
        then 200 with what the reload applied, 500 with why it did not (the log's words), or
        503 when no reload ran."""
        if method not in _RELOAD_METHODS:
            allow = ", ".join(_RELOAD_METHODS)
            headers = [("Content-Type", _TEXT), ("Allow", allow)]
            body = f"Only {' or '.join(_RELOAD_METHODS)} requests allowed\n".encode()
            return _respond(start_response, "405 Method Not Allowed", body, headers)
        if self._reload is None:
            return _respond(start_response, "403 Forbidden", b"Lifecycle API is not enabled.\n")
        result = self._reload()
        if result.applied:
            status = "200 OK"
        elif result.done:
            status = "500 Internal Server Error"
        else:
            status = "503 Service Unavailable"
        return _respond(start_response, status, result.message.encode() + b"\n")

    def _ready(self, start_response: StartResponse) -> Iterable[bytes]:
        waiting = [state.name for state in self._states() if not state.ready]
        if waiting:
            reason = "no successful refresh yet for mandant(s): " + ", ".join(waiting) + "\n"
            return _respond(start_response, "503 Service Unavailable", reason.encode())
        return _respond(start_response, "200 OK", b"ready\n")

    def _changes(self, query: str, start_response: StartResponse) -> Iterable[bytes]:
        try:
            mandant, kind, limit = self._changes_query(query)
        except BadRequest as e:
            body = json.dumps({"error": str(e)}).encode() + b"\n"
            return _respond(start_response, "400 Bad Request", body, _JSON_HEADERS)
        entries = self._station_changes.latest(mandant=mandant, kind=kind, limit=limit)
        document = {
            "changes": [entry.as_dict() for entry in entries],
            "max_entries": self._station_changes.max_entries,
        }
        # errors="replace": text UTF-8 cannot encode (parsing repairs it) must not fail the page
        body = json.dumps(document, ensure_ascii=False, indent=1).encode(errors="replace") + b"\n"
        return _respond(start_response, "200 OK", body, _JSON_HEADERS)

    def _changes_query(self, query: str) -> tuple[str | None, str | None, int]:
        """(mandant, kind, limit) from the query string; raises BadRequest."""
        params = parse_qs(query, keep_blank_values=True)
        for name, values in params.items():
            if name not in _CHANGES_PARAMETERS:
                raise BadRequest(
                    f"unknown parameter {name!r}; known: {', '.join(_CHANGES_PARAMETERS)}"
                )
            if len(values) > 1:
                raise BadRequest(f"parameter {name!r} given {len(values)} times; give it once")
        mandant = params.get("mandant", [None])[0]
        names = [state.name for state in self._states()]
        if mandant is not None and mandant not in names:
            raise BadRequest(f"unknown mandant {mandant!r}; known: {', '.join(names)}")
        kind = params.get("kind", [None])[0]
        if kind is not None and kind not in CHANGE_KINDS:
            raise BadRequest(f"unknown kind {kind!r}; known: {', '.join(CHANGE_KINDS)}")
        limit_text = params.get("limit", [None])[0]
        if limit_text is None:
            return mandant, kind, DEFAULT_CHANGES_LIMIT
        if (
            not (limit_text.isascii() and limit_text.isdigit())
            or len(limit_text) > _MAX_LIMIT_DIGITS
            or int(limit_text) < 1
        ):
            shown = limit_text if len(limit_text) <= 20 else limit_text[:20] + "..."
            raise BadRequest(
                f"limit must be a whole number from 1 to {10**_MAX_LIMIT_DIGITS - 1}, got {shown!r}"
            )
        # The ring holds no more than max_entries, so a larger limit means all of them.
        return mandant, kind, min(int(limit_text), self._station_changes.max_entries)

    def _landing(self, start_response: StartResponse) -> Iterable[bytes]:
        rows = "\n".join(_mandant_row(state) for state in self._states())
        changes = "\n".join(
            _change_row(entry) for entry in self._station_changes.latest(limit=LANDING_CHANGES)
        )
        if not changes:
            changes = '<tr><td colspan="6">no changes since the exporter started</td></tr>'

        path = html.escape(self._telemetry_path)
        page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>be.ENERGISED exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}
.up{{color:#1a7f37}}.down{{color:#cf222e}}</style></head>
<body><h1>be.ENERGISED CPO API exporter</h1>
<p>Version {html.escape(__version__)}.
<a href="{path}">Metrics</a> · <a href="/changes">Changes (JSON)</a> ·
<a href="/healthz">Health</a> · <a href="/readyz">Readiness</a></p>
<table><thead><tr><th>Mandant</th><th>Status</th><th>Stations</th><th>Last success</th>
<th>Last error</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<h2>Latest changes</h2>
<table><thead><tr><th>Time</th><th>Mandant</th><th>Change</th><th>Station</th>
<th>Charge box identity</th><th>Firmware</th></tr></thead>
<tbody>
{changes}
</tbody></table></body></html>
"""
        headers = [("Content-Type", "text/html; charset=utf-8")]
        return _respond(start_response, "200 OK", page.encode(errors="replace"), headers)


def _mandant_row(state: MandantState) -> str:
    status = '<span class="up">up</span>' if state.up else '<span class="down">down</span>'
    stations = str(len(state.snapshot)) if state.snapshot is not None else "none yet"
    last = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(state.last_success))
        if state.last_success is not None
        else "never"
    )
    cells = [html.escape(state.name), status, stations, last, html.escape(state.last_error or "")]
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _change_row(entry: ChangeEntry) -> str:
    change = entry.change
    firmware = {
        "added": change.firmware_to,
        "removed": change.firmware_from,
        "firmware_changed": f"{change.firmware_from or 'none'} → {change.firmware_to or 'none'}",
    }[change.kind]
    cells = [
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(entry.time)),
        entry.mandant,
        change.kind.replace("_", " "),
        change.label or change.station_id,
        change.charge_box_identity,
        firmware,
    ]
    return "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>"


def accepts_openmetrics(header: str) -> bool:
    """Whether an Accept value asks for OpenMetrics 1 before the text format, in the order
    prometheus_client reads it: ``application/openmetrics-text`` without a version or with a
    1.x one wins, ``text/plain`` with a version other than 0.0.4 loses, anything else is
    passed over (q-values are not weighed). Unlike prometheus_client's choose_encoder, no
    value raises, and the version the answer names is always the one it is in."""
    for element in header.split(","):
        media, *params = (part.strip() for part in element.split(";"))
        versions = [
            value.strip()
            for name, _, value in (param.partition("=") for param in params)
            if name.strip().lower() == "version"
        ]
        version = versions[0] if versions else None
        media = media.lower()
        if media == "application/openmetrics-text" and (version is None or version[:2] == "1."):
            return True
        if media == "text/plain" and version not in (None, "0.0.4"):
            return False
    return False


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding value accepts gzip: ``gzip`` (or ``x-gzip``) with a q-value
    above 0, or else ``*`` with one; names are case-insensitive, a broken q-value counts as 0."""
    q_of: dict[str, float] = {}
    for element in header.split(","):
        coding, *params = (part.strip() for part in element.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                value = value.strip()
                q = float(value) if _QVALUE.fullmatch(value) else 0.0
        q_of[coding.lower()] = q
    for coding in ("gzip", "x-gzip", "*"):
        if coding in q_of:
            return q_of[coding] > 0
    return False


def _respond(
    start_response: StartResponse,
    status: str,
    body: bytes | Sequence[bytes] | Body,
    headers: list[tuple[str, str]] | None = None,
    *,
    exc: bool = False,
) -> Iterable[bytes]:
    """Start the response; the body goes out as it is, one chunk after the other.

    ``exc``: answering an error, so replace a response already started but not yet sent.
    """
    chunks = [body] if isinstance(body, bytes) else body
    headers = headers or [("Content-Type", "text/plain; charset=utf-8")]
    length = body.length if isinstance(body, Body) else sum(len(chunk) for chunk in chunks)
    start_response(
        status, [*headers, ("Content-Length", str(length))], sys.exc_info() if exc else None
    )
    return chunks


def serve(
    app: ExporterApp,
    listeners: Sequence[socket.socket],
    web_config: WebConfig | None = None,
    limits: ServerLimits = DEFAULT_LIMITS,
) -> tuple[Server, threading.Thread]:
    """Start serving ``app`` on ``listeners`` (:mod:`exporter.listeners`) within ``limits``, one
    accepting thread for all, in a daemon thread.

    With a web config that has TLS, every connection must speak TLS; basic auth is the app's
    (``ExporterApp(auth=...)``), as it leaves /healthz open. The server counts its refusals
    where the app does.
    """
    server = Server(listeners, limits=limits, refused=app.refused)
    server.set_app(app)
    if web_config is not None:
        server.ssl_context = web_config.ssl_context
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return server, thread
