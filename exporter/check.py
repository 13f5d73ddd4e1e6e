"""``beenergised-exporter check``: read every mandant once and say what works and what does not.

The first command a new user runs. The CLI validates the configuration exactly as for the
exporter (with this module's parser and environment) and starts the demo API; then this module
fetches per mandant a token and every page of the charging station list once, and reports the
fleet, or the reason of the failure with a hint of what to change. Exit status 0 when every
mandant succeeded, 1 when one failed, 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.api import connect
from exporter.authheader import shown
from exporter.commandline import build_parser
from exporter.config import Settings
from exporter.errors import RefreshError
from exporter.http import Deadline, Limits, RequestCounter
from exporter.model import DATA_ISSUES, FOLDED_FIRMWARE, MAX_TEXT_LENGTH, Mandant, Snapshot
from exporter.options import DEFAULT_TOKEN_URL

LOG = logging.getLogger(__name__)

PROG = "beenergised-exporter check"
OUTPUTS = ("text", "json")
DEFAULT_LOG_LEVEL = "warn"
"""Log level unless --log.level or BEENERGISED_LOG_LEVEL says otherwise: keeps the report
readable (log lines go to stderr, the report to stdout)."""

ISSUE_MEANINGS = {
    "no_firmware_version": "no firmwareVersion (counted as firmware unknown)",
    "no_sim_data": "no iccid or no imsi",
    "duplicate_charge_box_identity": "chargeBoxIdentity shared with another station",
    "invalid_text": "control characters or text not in UTF-8 (shown as U+FFFD)",
    "text_too_long": f"id or text longer than {MAX_TEXT_LENGTH} characters (cut)",
    "duplicate_station_id": "listed more than once by the API (counted once)",
    "firmware_version_folded": "firmware among the versions beyond --firmware.max-versions "
    f"(shown as {FOLDED_FIRMWARE})",
}

_LABEL_WIDTH = 13


@dataclass(frozen=True, slots=True)
class Failure:
    """Why the check of one mandant failed, and what the user may change."""

    reason: str  # a RefreshError reason, or "error" for a bug of ours
    message: str
    hint: str


@dataclass(frozen=True, slots=True)
class MandantResult:
    """The outcome of reading one mandant once."""

    mandant: Mandant
    seconds: float  # wall time of the token and every page
    pages: int  # successful responses of the stations endpoint
    token_expires_in: float | None  # None when no token was obtained
    authorization: str | None  # the form of the header the API accepted, None before a page
    snapshot: Snapshot | None  # None when the check failed
    failure: Failure | None

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass(frozen=True, slots=True)
class _Hint:
    """A hint and when it applies: the failure's ``reason``, the ``step`` that failed, the
    HTTP ``statuses`` of the error, a text the message ``says`` (any of them); a condition not
    given always holds. ``{url}`` in the text names the setting of the step's URL."""

    text: str
    reason: str | None = None
    step: str | None = None
    statuses: Container[int] | None = None
    says: tuple[str, ...] = ()

    def applies(self, reason: str, step: str, status: int | None, message: str) -> bool:
        return (
            self.reason in (None, reason)
            and self.step in (None, step)
            and (self.statuses is None or status in self.statuses)
            and (not self.says or any(text in message for text in self.says))
        )


_BUSY = frozenset({429, *range(500, 1000)})
_HINTS = (
    _Hint("is {url} right, and can this machine reach it (DNS, proxy, firewall)?", "connection"),
    _Hint(
        "a certificate problem, not the network: if {url}'s server uses a private CA or a "
        "TLS-inspecting proxy is in between, set ca_file in the config file, --api.ca-file "
        "or REQUESTS_CA_BUNDLE to the PEM file of that CA's certificate",
        "tls",
    ),
    _Hint(
        "no complete answer in time from {url}: is the server overloaded, or does a firewall "
        "drop the packets? A request may take --api.request-timeout, a refresh "
        "--refresh.timeout",
        "timeout",
    ),
    _Hint(
        "{url} lists more stations than one read may hold: raise --api.max-stations if the "
        "fleet is that large; if it is not, the API's listing does not end",
        "too_large",
        says=("--api.max-stations",),
    ),
    _Hint(
        "{url} lists more pages than one read fetches: raise --api.page-limit if the fleet is "
        "that large; if it is not, the API's listing does not end",
        "too_large",
        says=("--api.page-limit",),
    ),
    _Hint(
        "the answer of {url} is larger than a page of stations should be: is {url} right? "
        "Raise --api.max-response-size (or lower --api.page-limit) if it is genuine",
        "too_large",
    ),
    _Hint(
        f"is token_url the OAuth2 token endpoint, e.g. {DEFAULT_TOKEN_URL}?",
        step="token",
        statuses={404},
    ),
    _Hint(
        "the token endpoint answered with a token this exporter cannot send: is token_url the "
        "mandant's OAuth2 token endpoint, with no proxy in between that rewrites answers?",
        "auth",
        says=("cannot go into an HTTP header", "is not Bearer"),  # what auth.py says of one
    ),
    _Hint(
        "use the client id and secret of a CPO API client of this mandant; check also "
        "token_url and --api.token-auth-method (basic, post or query)",
        "auth",
        "token",
    ),
    _Hint(
        "the API refused the token in the form that --api.authorization (authorization: in a "
        "config file) sets: set it to auto, which tries both forms of the Authorization "
        "header; if that fails too, does the API client have a cpoapi scope?",
        "auth",
        says=("try --api.authorization=auto",),
    ),
    _Hint(
        "the token endpoint accepted the credentials but the API refused the token: does the "
        "API client have a cpoapi scope, and does it belong to this api_url's mandant?",
        "auth",
    ),
    _Hint(
        "is api_url the base URL of your mandant, e.g. https://yourmandant.beenergised.cloud?",
        "http",
        statuses={404},
    ),
    _Hint(
        "the server is busy or failing, not your settings: try again in a few minutes",
        "http",
        statuses=_BUSY,
    ),
    _Hint("the server refused the request: is {url} right, and is no proxy in between?", "http"),
    _Hint(
        "the answer is not what the CPO API sends: is {url} right, and not a web page, a "
        "login page or a proxy's error page?",
        "parse",
    ),
    _Hint(
        "{url} sends more stations a page than page[limit] asks for, so its pages cannot be "
        "told apart: is {url} the CPO API? If it is, report it to be.ENERGISED",
        "pagination",
        says=("page[limit]",),
    ),
    _Hint("the station list changed while it was read; run the check again", "pagination"),
    _Hint(f"a bug of the exporter: run again with --log.level=debug and report what {PROG} logs"),
)
"""The hints of ``hint``, the first that applies wins; the last applies to anything."""


def hint(reason: str, step: str, message: str, status: int | None = None) -> str:
    """A short, actionable hint for a failure of ``step`` ("token" or "stations") with
    ``message``; ``status`` is the HTTP status the error carries."""
    url = "token_url" if step == "token" else "api_url"
    found = next(h for h in _HINTS if h.applies(reason, step, status, message))
    return found.text.replace("{url}", url)


def check_mandant(mandant: Mandant, settings: Settings) -> MandantResult:
    """Fetch a token and every page of ``mandant``'s station list once; never raises."""
    counter = RequestCounter()
    limits = Limits(settings.request_timeout, settings.max_response_size)
    tokens, client = connect(
        mandant,
        settings.page_limit,
        settings.concurrency,
        counter,
        limits=limits,
        max_stations=settings.max_stations,
    )
    deadline = Deadline(settings.refresh_timeout)
    step = "token"
    snapshot: Snapshot | None = None
    failure: Failure | None = None
    started = time.monotonic()
    try:
        tokens.token(deadline)
        step = "stations"
        snapshot = Snapshot.build(
            client.stations(deadline),
            time.time(),
            mandant.firmware_max_versions,
            mandant.target_firmware,
        )
    except RefreshError as exc:
        message = tokens.redact(str(exc))
        failure = Failure(exc.reason, message, hint(exc.reason, step, message, exc.status))
    except Exception as exc:  # a bug of ours: report it as one failure, not a traceback
        LOG.debug("check of mandant %s failed unexpectedly", mandant.name, exc_info=True)
        message = tokens.redact(f"unexpected {type(exc).__name__} while reading the {step}: {exc}")
        failure = Failure("error", message, hint("error", step, message))
    seconds = time.monotonic() - started
    expires_at = tokens.expires_at
    return MandantResult(
        mandant=mandant,
        seconds=seconds,
        pages=counter.counts().get(("charging_stations", "200"), 0),
        token_expires_in=None
        if expires_at is None or not math.isfinite(expires_at)
        else max(0.0, expires_at - time.time()),
        authorization=client.header.accepted,
        snapshot=snapshot,
        failure=failure,
    )


def firmware_rows(snapshot: Snapshot) -> list[tuple[str, int]]:
    """(version, stations) as /metrics shows them, most stations first, then by version."""
    return sorted(snapshot.firmware.counts.items(), key=lambda row: (-row[1], row[0]))


def _on_target(mandant: Mandant, label: str) -> bool:
    """Whether a row of the firmware table is on target; never the folded row, which may hold
    versions on target and others alike."""
    target = mandant.target_firmware
    return target is not None and label != FOLDED_FIRMWARE and target.matches_label(label)


def _progress(on_target: int, stations: int) -> str:
    if not stations:
        return f"{on_target} of 0 stations"
    # Rounded down, so 999 of 1000 never shows as 100%.
    return f"{on_target} of {stations} stations ({math.floor(100 * on_target / stations)}%)"


def _row(label: str, value: str) -> str:
    return f"  {label:<{_LABEL_WIDTH}}{value}".rstrip()


def _table(label: str, rows: list[tuple[str, int, str]]) -> list[str]:
    """Rows of (name, count, note) under one label, names and counts aligned."""
    name_width = max(len(name) for name, _, _ in rows)
    count_width = max(len(str(count)) for _, count, _ in rows)
    return [
        _row(
            label if index == 0 else "",
            f"{name:<{name_width}}  {count:>{count_width}}  {note}",
        )
        for index, (name, count, note) in enumerate(rows)
    ]


def _authorization_text(mandant: Mandant, form: str) -> str:
    """The form of the Authorization header the API accepted, and how it was chosen."""
    how = "found by auto" if mandant.authorization == "auto" else "as set"
    return f"{form} ({shown(form)}), {how}"


def render_text(result: MandantResult) -> str:
    """One block of the text report."""
    mandant = result.mandant
    lines = [f"mandant {mandant.name}  {mandant.api_url}  {'OK' if result.ok else 'FAILED'}"]
    timing = [_row("time", f"{result.seconds:.3f}s")]
    if result.token_expires_in is not None:
        timing.append(_row("token", f"valid for {result.token_expires_in:.0f}s"))
    if result.authorization is not None:
        timing.append(_row("auth header", _authorization_text(mandant, result.authorization)))
    if result.failure is not None:
        lines += [
            _row("reason", result.failure.reason),
            _row("error", result.failure.message),
            _row("hint", result.failure.hint),
            *timing,
        ]
        return "\n".join(lines)
    snapshot = result.snapshot
    assert snapshot is not None
    lines += [_row("stations", str(len(snapshot))), _row("pages", str(result.pages)), *timing]
    firmware = [
        (version, count, "on target" if _on_target(mandant, version) else "")
        for version, count in firmware_rows(snapshot)
    ]
    lines += _table("firmware", firmware) if firmware else [_row("firmware", "no stations")]
    target = mandant.target_firmware
    if target is not None:
        on_target = target.stations_on_target(snapshot)
        lines.append(_row("target", f"{target.text}: {_progress(on_target, len(snapshot))}"))
    issues = [
        (issue, snapshot.data_issues[issue], ISSUE_MEANINGS[issue])
        for issue in DATA_ISSUES
        if snapshot.data_issues.get(issue)
    ]
    lines += _table("data issues", issues) if issues else [_row("data issues", "none")]
    return "\n".join(lines)


def summary_line(results: Sequence[MandantResult]) -> str:
    failed = sum(not result.ok for result in results)
    if failed:
        return f"{failed} of {len(results)} mandant(s) FAILED"
    return f"all {len(results)} mandant(s) OK"


def as_json(result: MandantResult) -> dict[str, Any]:
    """One entry of the JSON report's ``mandants`` list."""
    mandant, snapshot, failure = result.mandant, result.snapshot, result.failure
    target = mandant.target_firmware
    expires_in = result.token_expires_in
    return {
        "name": mandant.name,
        "api_url": mandant.api_url,
        "ok": result.ok,
        "seconds": round(result.seconds, 3),
        "pages": result.pages,
        "stations": None if snapshot is None else len(snapshot),
        "token_expires_in": None if expires_in is None else round(expires_in),
        "authorization": {"setting": mandant.authorization, "accepted": result.authorization},
        "firmware": None if snapshot is None else dict(firmware_rows(snapshot)),
        "target": None
        if target is None
        else {
            "firmware": target.text,
            "on_target": None if snapshot is None else target.stations_on_target(snapshot),
        },
        "data_issues": None
        if snapshot is None
        else {issue: snapshot.data_issues.get(issue, 0) for issue in DATA_ISSUES},
        "error": None
        if failure is None
        else {"reason": failure.reason, "message": failure.message, "hint": failure.hint},
    }


def build_check_parser() -> argparse.ArgumentParser:
    """The exporter's flags plus --output."""
    parser = build_parser(
        prog=PROG,
        description="Check the configuration, then read every mandant once: a token and every "
        "page of the charging station list. Prints per mandant the stations, pages, time, "
        "firmware versions, rollout progress and data issues, or the reason it failed with a "
        "hint. Exit status: 0 every mandant OK, 1 a mandant failed, 2 configuration error.",
        log_level=DEFAULT_LOG_LEVEL,
    )
    parser.add_argument(
        "--output",
        choices=OUTPUTS,
        default="text",
        metavar="FORMAT",
        help="report format on stdout: text (readable) or json (one object, for scripts); "
        "default text",
    )
    return parser


def environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with the check's default log level unless BEENERGISED_LOG_LEVEL sets one
    (--log.level still wins)."""
    environment = dict(environ)
    if not environment.get("BEENERGISED_LOG_LEVEL"):
        environment["BEENERGISED_LOG_LEVEL"] = DEFAULT_LOG_LEVEL
    return environment


def json_requested(argv: Sequence[str]) -> bool:
    """Whether ``argv`` asks for --output json, read without the parser (which may be what
    failed)."""
    for index, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--output=json" or (
            arg == "--output" and argv[index + 1 : index + 2] == ["json"]
        ):
            return True
    return False


def print_json(document: dict[str, Any]) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False), flush=True)


def run_checks(settings: Settings, output: str) -> int:
    """Check every mandant in turn, print the report; the exit status (0 or 1)."""
    if settings.web_config_file and output == "text":
        print(f"web config file {settings.web_config_file}: valid\n", flush=True)
    results = []
    for mandant in settings.mandants:
        result = check_mandant(mandant, settings)
        results.append(result)
        if output == "text":
            print(render_text(result) + "\n", flush=True)
    ok = all(result.ok for result in results)
    if output == "json":
        print_json({"ok": ok, "mandants": [as_json(result) for result in results]})
    else:
        print(summary_line(results), flush=True)
    return 0 if ok else 1
