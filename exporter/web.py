"""The HTTP side: /metrics, /healthz, /readyz and a landing page at /, as a WSGI app.

Nothing here calls the remote API: every page reads the latest published mandant states.
"""

from __future__ import annotations

import gzip
import html
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter import __version__
from exporter.refresh import MandantState

LOG = logging.getLogger(__name__)

StartResponse = Callable[..., Any]


class ExporterApp:
    """WSGI application serving the exporter's endpoints."""

    def __init__(
        self,
        registry: CollectorRegistry,
        states: Callable[[], Sequence[MandantState]],
        *,
        telemetry_path: str = "/metrics",
    ) -> None:
        self._registry = registry
        self._states = states
        self._telemetry_path = telemetry_path

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/") or "/"
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _respond(start_response, "405 Method Not Allowed", b"method not allowed\n")
        if path == self._telemetry_path:
            return self._metrics(environ, start_response)
        if path == "/healthz":
            return _respond(start_response, "200 OK", b"ok\n")
        if path == "/readyz":
            return self._ready(start_response)
        if path == "/":
            return self._landing(start_response)
        return _respond(start_response, "404 Not Found", b"not found\n")

    def _metrics(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
        body = encoder(self._registry)
        headers = [("Content-Type", content_type)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=6)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Vary", "Accept, Accept-Encoding"))
        return _respond(start_response, "200 OK", body, headers)

    def _ready(self, start_response: StartResponse) -> Iterable[bytes]:
        waiting = [state.name for state in self._states() if not state.ready]
        if waiting:
            reason = "no successful refresh yet for mandant(s): " + ", ".join(waiting) + "\n"
            return _respond(start_response, "503 Service Unavailable", reason.encode())
        return _respond(start_response, "200 OK", b"ready\n")

    def _landing(self, start_response: StartResponse) -> Iterable[bytes]:
        rows = "\n".join(_mandant_row(state) for state in self._states())
        path = html.escape(self._telemetry_path)
        page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>be.ENERGISED exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}
.up{{color:#1a7f37}}.down{{color:#cf222e}}</style></head>
<body><h1>be.ENERGISED CPO API exporter</h1>
<p>Version {html.escape(__version__)}.
<a href="{path}">Metrics</a> · <a href="/healthz">Health</a> · <a href="/readyz">Readiness</a></p>
<table><thead><tr><th>Mandant</th><th>Status</th><th>Stations</th><th>Last success</th>
<th>Last error</th></tr></thead>
<tbody>
{rows}
</tbody></table></body></html>
"""
        headers = [("Content-Type", "text/html; charset=utf-8")]
        return _respond(start_response, "200 OK", page.encode(), headers)


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


def _respond(
    start_response: StartResponse,
    status: str,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    headers = headers or [("Content-Type", "text/plain; charset=utf-8")]
    start_response(status, [*headers, ("Content-Length", str(len(body)))])
    return [body]


class _QuietHandler(WSGIRequestHandler):
    """Request handler that logs at debug level instead of printing every request to stderr."""

    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("%s %s", self.address_string(), format % args)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingServerV6(_ThreadingServer):
    address_family = socket.AF_INET6


def serve(app: ExporterApp, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Start serving ``app`` on host:port in a daemon thread ("" listens on every interface)."""
    server_class = _ThreadingServerV6 if ":" in host else _ThreadingServer
    server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return server, thread
