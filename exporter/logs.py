"""Log set-up: one line per event, logfmt or JSON, as Prometheus' Go exporters write them."""

from __future__ import annotations

import json
import logging
import sys
import time

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}

_NAMES = {logging.WARNING: "warn", logging.CRITICAL: "error"}


def _fields(record: logging.LogRecord) -> dict[str, str]:
    fields = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": _NAMES.get(record.levelno, record.levelname.lower()),
        "source": record.name,
        "msg": record.getMessage(),
    }
    # structured fields, given as LOG.info(msg, extra={"fields": {...}})
    extra = getattr(record, "fields", None)
    if isinstance(extra, dict):
        for key, value in extra.items():
            fields.setdefault(str(key), str(value))
    if record.exc_info:
        fields["err"] = logging.Formatter().formatException(record.exc_info)
    return fields


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=info source=exporter.refresh msg="..."``"""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in _fields(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the same keys as the logfmt output."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), ensure_ascii=False)


def _logfmt_value(value: str) -> str:
    if value and not any(c in value for c in ' ="\\\n\t'):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def setup_logging(level: str, fmt: str) -> None:
    """Send every log record to stderr in ``fmt`` at ``level`` and above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # urllib3 logs request lines (with query strings) at debug and, for a server's malformed
    # headers, at warning; APScheduler every job run at info: noise, and urllib3's could show a
    # secret sent with --token-auth-method=query.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
