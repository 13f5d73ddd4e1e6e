"""The Grafana dashboards in ``grafana/dashboards`` as data: panels, their PromQL, metric names.

Shared by the static dashboard tests and the end-to-end test that runs every panel query
against a real Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR: Path = ROOT / "grafana" / "dashboards"

EMPTY_MARKER = "Empty in a steady state"
"""A panel whose description contains this may legitimately return no data."""

SUBSTITUTIONS = {
    "mandant": ".*",
    "firmware_version": ".*",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
}
"""What the Grafana variables in a query stand for: every mandant and firmware, a 1h range."""

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")

_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "and",
        "or",
        "unless",
        "atan2",
        "inf",
        "nan",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.$:])([a-zA-Z_:][\w:]*)(\s*\()?")


def load_dashboards() -> dict[str, dict]:
    """Every dashboard file, by file name, parsed."""
    return {
        path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))
    }


def iter_panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def substitute(expr: str) -> str:
    """``expr`` with the Grafana variables replaced as in ``SUBSTITUTIONS``.

    ``$datasource`` is left alone; any other unknown variable is an error (a typo).
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name == "datasource":
            return match.group(0)
        if name not in SUBSTITUTIONS:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return SUBSTITUTIONS[name]

    return _VARIABLE.sub(replace, expr)


def panel_queries(dashboard: dict) -> list[tuple[str, str, bool]]:
    """(panel title, PromQL with variables substituted, may be empty) for every query."""
    queries = []
    for panel in iter_panels(dashboard):
        may_be_empty = EMPTY_MARKER in panel.get("description", "")
        for target in panel.get("targets", []):
            if target.get("expr") and not target.get("hide"):
                queries.append((panel["title"], substitute(target["expr"]), may_be_empty))
    return queries


def metric_names(expr: str) -> set[str]:
    """Names of the metrics a PromQL expression selects (good enough, not a parser)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    return {
        name
        for name, call in _IDENTIFIER.findall(text)
        if not call and name.lower() not in _KEYWORDS
    }
