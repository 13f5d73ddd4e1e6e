"""Command line entry point: settings -> refreshers -> scheduler -> HTTP server."""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import MappingProxyType

from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from exporter import __version__, check
from exporter.commandline import build_parser
from exporter.config import Settings, load_settings
from exporter.errors import ConfigError
from exporter.exposition import Exposition
from exporter.http import Limits
from exporter.lifecycle import (
    SHUTTING_DOWN,
    Event,
    ReloadRequest,
    ReloadResult,
    asking,
    refuse_waiting,
)
from exporter.listeners import addresses_text, listen, systemd_sockets
from exporter.logs import setup_logging
from exporter.metrics import FleetCollector, RefreshAge
from exporter.model import Mandant, MandantState
from exporter.refresh import (
    MandantRefresher,
    job_id,
    schedule,
    start_scheduler,
)
from exporter.refused import RefusedRequests
from exporter.reloadstatus import ReloadStatus
from exporter.scheduler import SteadyScheduler
from exporter.stationchanges import StationChanges
from exporter.web import ExporterApp, serve
from exporter.webauth import BasicAuth, WebConfig
from exporter.webconfig import load_web_config
from exporter.webserver import Server, ServerLimits

LOG = logging.getLogger("exporter")

PROG = "beenergised-exporter"

SHUTDOWN_GRACE = 3.0
"""Seconds to wait for running refreshes at shutdown, so SIGTERM always ends within 5 s."""
RESTART_SETTINGS = ("refresh_interval", "station_info", "changes_max_entries")
"""Settings of the config file that a reload does not apply: a change is logged as a warning
and takes effect at the next start. (Flags and environment do not change in a running process.)
"""


def build_exposition(
    states: Callable[[], Sequence[MandantState]],
    settings: Settings,
    reload_status: ReloadStatus | None = None,
    refused: RefusedRequests | None = None,
) -> Exposition:
    """Our fleet metrics (rendered once per refresh), and per scrape (they change all the time)
    the client library's process, platform and GC collectors, the reload status and the
    requests refused by basic auth."""
    live = CollectorRegistry()
    ProcessCollector(registry=live)
    PlatformCollector(registry=live)
    GCCollector(registry=live)
    live.register(RefreshAge(states))
    for collector in (reload_status, refused):
        if collector is not None:
            live.register(collector)
    fleet = FleetCollector(
        station_info=settings.station_info, refresh_interval=settings.refresh_interval
    )
    return Exposition(fleet, states, live)


@dataclass
class Running:
    """What a reload may change while the exporter runs; ``refreshers`` is replaced whole, so
    readers iterate a consistent tuple."""

    settings: Settings
    web_config: WebConfig | None
    refreshers: tuple[MandantRefresher, ...]


class Reloader:
    """Re-reads the configuration on SIGHUP and POST /-/reload, as Prometheus does: the same
    flags and environment, the config file, the secret files and the web config file. A
    configuration with any error is not applied at all (one error line names the setting); a
    good one is."""

    def __init__(
        self,
        args: Sequence[str],
        running: Running,
        *,
        new_refresher: Callable[[Mandant, Settings], MandantRefresher],
        scheduler: SteadyScheduler,
        app: ExporterApp,
        server: Server,
        exposition: Exposition,
        status: ReloadStatus,
    ) -> None:
        self._args = args
        self._running = running
        self._new_refresher = new_refresher
        self._scheduler = scheduler
        self._app = app
        self._server = server
        self._exposition = exposition
        self._status = status

    def reload(self) -> ReloadResult:
        """Apply the configuration as it is now, or nothing of it if it is bad; the result
        says what was applied or why not, in the words of the log lines."""
        old = self._running.settings
        try:
            settings, web_config = _configuration(self._args, os.environ, build_parser())
        except ConfigError as exc:
            self._status.record(False)  # before the line: who reads the line sees the metric
            message = f"reload failed, still running the previous configuration: {exc}"
            LOG.error(message)
            return ReloadResult(False, message)
        except Exception:  # a defect of ours must not end a running exporter; counted
            self._status.record(False)
            message = "reload failed unexpectedly, still running the previous configuration"
            LOG.exception(message)
            return ReloadResult(False, message + "; the log has the details")
        said: list[str] = []

        def warn(message: str) -> None:
            LOG.warning(message)
            said.append(message)

        if old.demo:
            settings = replace(settings, mandants=old.mandants)
        for field in RESTART_SETTINGS:
            if getattr(settings, field) != getattr(old, field):
                warn(f"{field} changed: it takes a restart; the reload keeps the old value")
        settings = replace(settings, **{field: getattr(old, field) for field in RESTART_SETTINGS})
        for warning in _warnings(settings, web_config):
            if warning not in old.warnings:
                warn(warning)
        self._apply_web_config(web_config, warn)
        said.append(self._apply_mandants(settings))
        self._running.settings = settings
        self._status.record(True)
        LOG.info("configuration reloaded")
        return ReloadResult(True, "\n".join(said))

    def _apply_web_config(self, web_config: WebConfig | None, warn: Callable[[str], None]) -> None:
        """New users and a new certificate count for new connections; turning TLS on or off
        takes a restart (the port would start answering another protocol)."""
        old = self._running.web_config
        old_tls = old.ssl_context if old is not None else None
        tls = web_config.ssl_context if web_config is not None else None
        users = web_config.users if web_config is not None else {}
        if (old_tls is None) != (tls is None):
            turned = "off" if tls is None else "on"
            serving = "plain HTTP" if old_tls is None else "HTTPS"
            warn(
                f"--web.config.file: turning TLS {turned} takes a restart; still serving {serving}"
            )
            tls = old_tls
        self._server.ssl_context = tls
        if dict(users) != dict(old.users if old is not None else {}):
            self._app.set_users(users)
        self._running.web_config = WebConfig(tls, MappingProxyType(dict(users)))

    def _apply_mandants(self, settings: Settings) -> str:
        """Start added mandants, stop removed ones, reconnect changed ones (keeping what they
        published and their counters); the line that says so."""
        old_settings = self._running.settings
        connection_changed = _connection_settings(settings) != _connection_settings(old_settings)
        current = {refresher.mandant.name: refresher for refresher in self._running.refreshers}
        kept: list[MandantRefresher] = []
        added: list[MandantRefresher] = []
        changed: list[str] = []
        for mandant in settings.mandants:
            refresher = current.pop(mandant.name, None)
            if refresher is None:
                refresher = self._new_refresher(mandant, settings)
                added.append(refresher)
            elif refresher.mandant != mandant or connection_changed:
                refresher.reconnect(
                    mandant,
                    page_limit=settings.page_limit,
                    concurrency=settings.concurrency,
                    max_stations=settings.max_stations,
                    timeout=settings.refresh_timeout,
                    limits=_limits(settings),
                )
                changed.append(mandant.name)
            kept.append(refresher)
        self._running.refreshers = tuple(kept)
        for name in current:
            self._scheduler.remove_job(job_id(name))
        for refresher in added:
            schedule(self._scheduler, refresher, settings.refresh_interval)
        self._exposition.update()
        summary = (
            f"configuration reloaded: {len(kept)} mandant(s); "
            f"added: {', '.join(refresher.mandant.name for refresher in added) or 'none'}; "
            f"removed: {', '.join(current) or 'none'}; changed: {', '.join(changed) or 'none'}"
        )
        LOG.info(summary)
        return summary


SIGNAL_POLL = 0.5
"""Seconds the main thread waits for a signal at a time. Python runs signal handlers in the
main thread only, and a signal the kernel hands to another thread does not wake a main thread
blocked in a wait without a timeout: the handler would run late, or never."""


def _next_signal(events: queue.SimpleQueue[Event]) -> tuple[int, list[ReloadRequest]]:
    """The next signal the handlers queued (a reload over HTTP counts as SIGHUP) and the
    reloads asked for over HTTP, waiting in short polls. Events queued meanwhile count once: a
    storm of SIGHUPs and requests is one reload, and a SIGTERM or SIGINT among them wins, so no
    burst queues up work or delays a shutdown."""
    while True:
        try:
            burst = [events.get(timeout=SIGNAL_POLL)]
        except queue.Empty:
            continue
        while not events.empty():
            burst.append(events.get_nowait())
        asked = [event for event in burst if isinstance(event, ReloadRequest)]
        signals = [event for event in burst if not isinstance(event, ReloadRequest)]
        stop = next((signum for signum in signals if signum != signal.SIGHUP), signal.SIGHUP)
        return stop, asked


def _limits(settings: Settings) -> Limits:
    return Limits(settings.request_timeout, settings.max_response_size)


def _connection_settings(settings: Settings) -> tuple[object, ...]:
    """The global settings a mandant's connection is built from: a change reconnects all."""
    return (
        settings.page_limit,
        settings.concurrency,
        settings.max_stations,
        settings.refresh_timeout,
        settings.request_timeout,
        settings.max_response_size,
    )


def _listeners(settings: Settings) -> list[socket.socket]:
    """The sockets to serve on: those systemd passed, or one bound to each listen address.
    Raises ConfigError naming what failed."""
    if settings.systemd_socket:
        return systemd_sockets()
    opened: list[socket.socket] = []
    for host, port in settings.listen_addresses:
        try:
            opened.append(listen(host, port))
        except OSError as exc:
            for sock in opened:
                sock.close()
            shown = f"[{host}]" if ":" in host else host
            raise ConfigError(f"cannot listen on {shown}:{port}: {exc.strerror}") from None
    return opened


def main(argv: Sequence[str] | None = None) -> int:
    """Run the exporter until SIGTERM or SIGINT, or ``check``; return the exit status.

    Both commands start up alike: settings, web config file, logging, the demo API."""
    args = list(sys.argv[1:] if argv is None else argv)
    checking = args[:1] == ["check"]
    if checking:
        args = args[1:]
    prog = check.PROG if checking else PROG
    parser = check.build_check_parser() if checking else build_parser()
    environ = check.environment(os.environ) if checking else os.environ
    try:
        settings, web_config = _configuration(args, environ, parser)
    except ConfigError as exc:
        if checking and check.json_requested(args):
            check.print_json({"ok": False, "error": str(exc)})
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    for warning in _warnings(settings, web_config):
        LOG.warning(warning)
    # From here on SIGHUP reloads instead of ending the process; the main thread does the work.
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    if not checking:
        _queue_signals(events)
    try:
        with _api(settings) as settings:
            if checking:
                return check.run_checks(settings, parser.parse_args(args).output)
            return serve_until_stopped(args, settings, web_config, events)
    except KeyboardInterrupt:  # only ``check``: the exporter turns SIGINT into a signal above
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _configuration(
    args: Sequence[str], environ: Mapping[str, str], parser: argparse.ArgumentParser
) -> tuple[Settings, WebConfig | None]:
    """The settings and the web config file they name; raises ConfigError."""
    settings = load_settings(args, environ, parser=parser)
    web_config = load_web_config(settings.web_config_file) if settings.web_config_file else None
    return settings, web_config


def _warnings(settings: Settings, web_config: WebConfig | None) -> tuple[str, ...]:
    return (*settings.warnings, *(web_config.warnings if web_config else ()))


def _queue_signals(events: queue.SimpleQueue[Event]) -> None:
    """SIGTERM, SIGINT and SIGHUP become events for the main thread to act on."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda signum, _frame: events.put(signum))


@contextmanager
def _api(settings: Settings) -> Iterator[Settings]:
    """The settings to run with: with --demo, pointing at the simulated API, which runs until
    the block ends."""
    if not settings.demo:
        yield settings
        return
    # Here only: a plain start loads neither the demo nor the simulator it runs.
    from exporter.demo import start_demo_api

    settings, simulator = start_demo_api(settings)
    try:
        yield settings
    finally:
        simulator.stop()


def serve_until_stopped(
    args: Sequence[str],
    settings: Settings,
    web_config: WebConfig | None,
    events: queue.SimpleQueue[Event],
) -> int:
    """Refresh every mandant and serve /metrics until SIGTERM or SIGINT; SIGHUP and POST
    /-/reload (with --web.enable-lifecycle) reload."""
    shutting_down = threading.Event()
    running = Running(settings, web_config, ())

    def states() -> list[MandantState]:
        return [refresher.state for refresher in running.refreshers]

    reload_status = ReloadStatus()
    refused = RefusedRequests()
    exposition = build_exposition(states, settings, reload_status, refused)
    station_changes = StationChanges(settings.changes_max_entries)

    def new_refresher(mandant: Mandant, settings: Settings) -> MandantRefresher:
        return MandantRefresher(
            mandant,
            page_limit=settings.page_limit,
            concurrency=settings.concurrency,
            max_stations=settings.max_stations,
            timeout=settings.refresh_timeout,
            interval=settings.refresh_interval,
            limits=_limits(settings),
            cancel=shutting_down,
            on_publish=exposition.update,
            station_changes=station_changes,
            serial_numbers=settings.station_info,
        )

    running.refreshers = tuple(new_refresher(mandant, settings) for mandant in settings.mandants)
    app = ExporterApp(
        exposition,
        states,
        station_changes,
        telemetry_path=settings.telemetry_path,
        auth=BasicAuth(web_config.users) if web_config and web_config.users else None,
        refused=refused,
        reload=asking(events) if settings.web_enable_lifecycle else None,
    )
    try:
        listeners = _listeners(settings)
    except ConfigError as exc:
        LOG.error("%s", exc)
        return 2 if settings.systemd_socket else 1  # systemd's sockets missing: a setting
    limits = ServerLimits(settings.web_max_requests, settings.web_read_header_timeout)
    server, _ = serve(app, listeners, web_config, limits)
    scheduler = start_scheduler(list(running.refreshers), settings.refresh_interval)
    LOG.info(
        "beenergised-exporter %s listening on %s%s, %d mandant(s), refresh every %gs",
        __version__,
        addresses_text(server.listeners),
        " (sockets from systemd)" if settings.systemd_socket else "",
        len(running.refreshers),
        settings.refresh_interval,
    )
    reloader = Reloader(
        args,
        running,
        new_refresher=new_refresher,
        scheduler=scheduler,
        app=app,
        server=server,
        exposition=exposition,
        status=reload_status,
    )
    while True:
        signum, asked = _next_signal(events)
        if signum != signal.SIGHUP:
            break
        cause = "received POST /-/reload" if asked else "received SIGHUP"
        LOG.info("%s, reloading the configuration", cause)
        result = reloader.reload()
        for request in asked:
            request.answer(result)
    for request in asked:
        request.answer(SHUTTING_DOWN)
    LOG.info("received %s, shutting down", signal.Signals(signum).name)
    shutting_down.set()
    server.shutdown()
    server.server_close()
    refuse_waiting(events)
    # Backoff waits end at once; a request in flight may not, so wait for it a little only.
    stopper = threading.Thread(target=scheduler.shutdown, kwargs={"wait": True}, daemon=True)
    stopper.start()
    stopper.join(SHUTDOWN_GRACE)
    if stopper.is_alive():
        LOG.warning("a refresh is still waiting for the API; exiting without it")
        logging.shutdown()
        os._exit(0)
    LOG.info("stopped")
    return 0
