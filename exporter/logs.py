"""Log set-up: one line per event, logfmt or JSON, as Prometheus' Go exporters write them."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}

_NAMES = {logging.WARNING: "warn", logging.CRITICAL: "error"}

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
"""Characters no log line carries raw, whoever wrote the message: control characters end a
line (so text from the API could forge another) or drive the terminal, the Unicode line
separators end lines in some viewers, and lone surrogates cannot be encoded."""
_LOGFMT_QUOTED = re.compile(r'[ ="\\]|' + _UNSAFE.pattern)
_LOGFMT_ESCAPED = re.compile(r'["\\]|' + _UNSAFE.pattern)
_SHORT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT_ESCAPES.get(char) or f"\\u{ord(char):04x}"


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
        # json.dumps escapes C0 controls; DEL, C1 and the rest of _UNSAFE it would leave raw.
        return _UNSAFE.sub(_escape, json.dumps(_fields(record), ensure_ascii=False))


def _logfmt_value(value: str) -> str:
    """A value as it is, or quoted with \\ \" \\n \\r \\t and \\uXXXX escapes."""
    if value and not _LOGFMT_QUOTED.search(value):
        return value
    return '"' + _LOGFMT_ESCAPED.sub(_escape, value) + '"'


def setup_logging(level: str, fmt: str) -> None:
    """Send every log record to stderr in ``fmt`` at ``level`` and above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # urllib3 logs request lines (with query strings) at debug and, for a server's malformed
    # headers, at warning; APScheduler every job run at info: noise, and urllib3's could show a
    # secret sent with --api.token-auth-method=query.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
