"""The Grafana dashboards and provisioning files, checked statically (no Grafana, no network).

Units: every panel states one, except ``table`` panels (they show label values, their value
column is hidden) and ``text`` panels (no data). That every query runs and returns data against
a real Prometheus is the end-to-end test's job; here: structure, variables, metric names, and
that the alert panels select the alerts of ``prometheus/alerts.yml``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from functools import cache

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from exporter.exposition import Exposition
from exporter.metrics import FleetCollector
from exporter.model import FirmwareTarget
from exporter.refused import RefusedRequests
from tests.dashboards import (
    DASHBOARD_DIR,
    EMPTY_MARKER,
    ROOT,
    iter_panels,
    load_dashboards,
    metric_names,
    panel_queries,
    substitute,
)
from tests.states import fixture_states

PROVISIONING = ROOT / "grafana" / "provisioning"
ALERT_RULES = ROOT / "prometheus" / "alerts.yml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
UIDS = {
    "beenergised-fleet.json": "beenergised-fleet",
    "beenergised-exporter.json": "beenergised-exporter",
}
CORE_PANEL_TYPES = {"stat", "timeseries", "bargauge", "piechart", "table", "state-timeline", "text"}
WITHOUT_UNIT = {"table", "text"}
TARGET_LABELS = {"instance", "job"}
MAY_BE_EMPTY = {
    ("beenergised-fleet.json", "Station alerts firing"),
    ("beenergised-fleet.json", "Stations that disappeared"),
    ("beenergised-fleet.json", "Stations whose firmware changed"),
    ("beenergised-fleet.json", "Stations sharing a charge box identity"),
    ("beenergised-exporter.json", "Refresh failures by reason"),
}
STATION_COLUMNS = [
    "mandant",
    "label",
    "charge_box_identity",
    "firmware_version",
    "serial_number",
    "station_id",
]

STATION_ALERTS = {"BeenergisedStationDisappeared", "BeenergisedStationAdded"}
FLEET_CHANGE_ALERTS = STATION_ALERTS | {
    "BeenergisedFleetLargelyDisappeared",
    "BeenergisedStationsDisappearedUnnamed",
    "BeenergisedStationsAddedUnnamed",
}
ALERTS = "ALERTS"
"""Prometheus' own series of the alerts its rules fire (no exporter metric)."""

DASHBOARDS = load_dashboards()
NAMES = sorted(DASHBOARDS)


@cache
def exposition() -> dict[str, set[str]]:
    """Every sample name the exporter can expose, with its label names (from the collectors)."""
    live = CollectorRegistry()
    north, *others = fixture_states()
    # a rollout target, so that the target metric is exposed too
    states = [dataclasses.replace(north, firmware_target=FirmwareTarget.parse("2.4.1")), *others]
    live.register(RefusedRequests())
    ProcessCollector(registry=live)
    PlatformCollector(registry=live)
    GCCollector(registry=live)
    body = b"".join(Exposition(FleetCollector(), lambda: states, live).body())
    labels: dict[str, set[str]] = {"up": set()}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


@cache
def alert_rules() -> dict[str, dict]:
    """The alerting rules of ``prometheus/alerts.yml``, by alert name."""
    document = yaml.safe_load(ALERT_RULES.read_text())
    return {rule["alert"]: rule for group in document["groups"] for rule in group["rules"]}


@cache
def series_labels() -> dict[str, set[str]]:
    """Label names of every series a panel may select: the exporter's, and ALERTS with
    alertname, alertstate, the rules' own labels and what their expressions group by."""
    alert_labels = {"alertname", "alertstate"}
    for rule in alert_rules().values():
        alert_labels |= set(rule.get("labels", {}))
        for group in re.findall(r"\bby\s*\(([^)]*)\)", rule["expr"]):
            alert_labels |= {label.strip() for label in group.split(",") if label.strip()}
    return exposition() | {ALERTS: alert_labels}


def alert_names(matchers: str) -> list[str]:
    """The names an ALERTS selector's alertname matcher lists (``=`` one, ``=~`` joined by ``|``);
    none without such a matcher."""
    match = re.search(r'\balertname\s*=~?\s*"([^"]*)"', matchers)
    return match.group(1).split("|") if match else []


def targets(dashboard: dict) -> Iterator[tuple[dict, dict]]:
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def walk(node: object, path: str = "") -> Iterator[tuple[str, object, object]]:
    """(path, key, value) of every key of every object in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")


def selectors(expr: str, metric: str) -> list[str]:
    """The label matchers of every selector of ``metric`` in ``expr`` ('' when it has none)."""
    return [
        match.group(1) or ""
        for match in re.finditer(rf"(?<![\w:]){metric}(?![\w:])\s*(\{{[^}}]*\}})?", expr)
    ]


def fleet_panel(title: str) -> dict:
    (panel,) = [p for p in iter_panels(DASHBOARDS["beenergised-fleet.json"]) if p["title"] == title]
    return panel


def variable(dashboard: dict, name: str) -> dict:
    found = [v for v in dashboard["templating"]["list"] if v["name"] == name]
    assert len(found) == 1, f"variable {name}: {len(found)} definitions"
    return found[0]


def test_both_dashboards_exist_and_nothing_else():
    assert set(DASHBOARDS) == set(UIDS)


@pytest.mark.parametrize("name", NAMES)
def test_file_is_canonically_formatted_json(name):
    # Two-space indented like Grafana's own export, so diffs of hand edits and exports stay small.
    text = (DASHBOARD_DIR / name).read_text()
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("name", NAMES)
def test_dashboard_settings(name):
    dashboard = DASHBOARDS[name]
    assert dashboard["uid"] == UIDS[name]
    assert dashboard["id"] is None
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["editable"] is True
    assert dashboard["refresh"] == "1m"
    assert dashboard["time"] == {"from": "now-24h", "to": "now"}
    assert "beenergised" in dashboard["tags"]
    assert dashboard["title"].startswith("be.ENERGISED ")


def test_uids_and_titles_are_unique():
    assert len({d["uid"] for d in DASHBOARDS.values()}) == len(DASHBOARDS)
    assert len({d["title"] for d in DASHBOARDS.values()}) == len(DASHBOARDS)
    assert DASHBOARDS["beenergised-fleet.json"]["title"] == "be.ENERGISED fleet overview"


@pytest.mark.parametrize("name", NAMES)
def test_no_hard_coded_datasource_anywhere(name):
    dashboard = DASHBOARDS[name]
    for path, key, value in walk(dashboard):
        if key == "datasource":
            assert value == DATASOURCE, f"{path}: datasource {value!r}"
        if key == "uid" and path:
            assert value == "${datasource}", f"{path}: uid {value!r}"
    assert "${DS_" not in json.dumps(dashboard), "an import placeholder instead of ${datasource}"


@pytest.mark.parametrize("name", NAMES)
def test_variables(name):
    dashboard = DASHBOARDS[name]
    datasource = variable(dashboard, "datasource")
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    expected = {"mandant": "label_values(beenergised_up, mandant)"}
    if name == "beenergised-fleet.json":
        expected["firmware_version"] = (
            'label_values(beenergised_charging_stations_by_firmware{mandant=~"$mandant"},'
            " firmware_version)"
        )
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", *expected]
    for var_name, query in expected.items():
        var = variable(dashboard, var_name)
        assert var["type"] == "query"
        assert var["datasource"] == DATASOURCE
        assert var["query"]["query"] == query
        assert var["definition"] == query
        assert var["multi"] is True
        assert var["includeAll"] is True
        assert var["allValue"] == ".*"


@pytest.mark.parametrize("name", NAMES)
def test_every_panel_is_documented_typed_and_has_a_unit(name):
    for panel in iter_panels(DASHBOARDS[name]):
        title = panel["title"]
        assert panel["type"] in CORE_PANEL_TYPES, title
        assert len(panel.get("description", "")) >= 60, f"{title}: no useful description"
        if panel["type"] == "text":
            continue
        assert panel["datasource"] == DATASOURCE, title
        assert panel["targets"], title
        if panel["type"] not in WITHOUT_UNIT:
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{title}: no unit"


@pytest.mark.parametrize("name", NAMES)
def test_panel_ids_are_unique_and_the_grid_has_no_overlaps(name):
    panels = list(iter_panels(DASHBOARDS[name]))
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids)
    assert len(set(ids)) == len(ids)
    boxes = []
    for panel in panels:
        grid = panel["gridPos"]
        x, y, w, h = grid["x"], grid["y"], grid["w"], grid["h"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 24, panel["title"]
        for title, (x2, y2, w2, h2) in boxes:
            overlap = x < x2 + w2 and x2 < x + w and y < y2 + h2 and y2 < y + h
            assert not overlap, f"{panel['title']} overlaps {title}"
        boxes.append((panel["title"], (x, y, w, h)))


@pytest.mark.parametrize("name", NAMES)
def test_every_target_has_the_datasource_and_a_unique_ref_id(name):
    for panel in iter_panels(DASHBOARDS[name]):
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(set(refs)) == len(refs), panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


@pytest.mark.parametrize("name", NAMES)
def test_every_selector_of_a_mandant_metric_filters_by_mandant(name):
    labels = series_labels()
    for panel, target in targets(DASHBOARDS[name]):
        expr = target["expr"]
        assert 'mandant=~"$mandant"' in expr, panel["title"]
        for metric in metric_names(expr):
            if "mandant" not in labels.get(metric, set()):
                continue
            for matchers in selectors(expr, metric):
                assert 'mandant=~"$mandant"' in matchers, f"{panel['title']}: {metric}"


def test_firmware_panels_follow_the_firmware_variable():
    for panel, target in targets(DASHBOARDS["beenergised-fleet.json"]):
        for metric in ("beenergised_charging_stations_by_firmware",):
            for matchers in selectors(target["expr"], metric):
                assert 'firmware_version=~"$firmware_version"' in matchers, panel["title"]


@pytest.mark.parametrize("name", NAMES)
def test_every_metric_is_one_the_exporter_exposes(name):
    known = exposition()
    queries = panel_queries(DASHBOARDS[name])
    assert queries
    for title, expr, _ in queries:
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        if ALERTS in names:
            # Not the exporter's but Prometheus' own: allowed only where an alertname matcher
            # names the alerts (that they are ours is checked against the rules below).
            for matchers in selectors(expr, ALERTS):
                assert alert_names(matchers), f"{title}: ALERTS without an alertname matcher"
            names -= {ALERTS}
        assert names <= set(known), f"{title}: unknown {names - set(known)}"


@pytest.mark.parametrize("name", NAMES)
def test_every_alert_a_panel_selects_is_a_firing_alert_of_the_rules(name):
    # Names, not patterns: a renamed alert fails here instead of leaving an empty panel, and
    # a search for the alert name finds the panel.
    rules = set(alert_rules())
    for panel, target in targets(DASHBOARDS[name]):
        for matchers in selectors(target["expr"], ALERTS):
            names = alert_names(matchers)
            assert names, f"{panel['title']}: ALERTS without an alertname matcher"
            assert set(names) <= rules, f"{panel['title']}: no such alert {set(names) - rules}"
            assert 'alertstate="firing"' in matchers, f"{panel['title']}: pending alerts too"


@pytest.mark.parametrize("name", NAMES)
def test_legends_and_groupings_use_labels_the_metrics_have(name):
    known = series_labels()
    for panel, target in targets(DASHBOARDS[name]):
        expr = target["expr"]
        available = set(TARGET_LABELS)
        for metric in metric_names(expr):
            available |= known[metric]
        used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        for group in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
            used |= {label.strip() for label in group.split(",") if label.strip()}
        assert used <= available, f"{panel['title']}: {used - available}"


def test_panels_that_may_be_empty_are_the_documented_ones():
    marked = {
        (name, title)
        for name, dashboard in DASHBOARDS.items()
        for title, _, may_be_empty in panel_queries(dashboard)
        if may_be_empty
    }
    assert marked == MAY_BE_EMPTY


def test_station_table_shows_the_station_labels_and_hides_the_rest():
    panel = fleet_panel("Stations")
    (target,) = panel["targets"]
    assert target["expr"].startswith("beenergised_charging_station_info{")
    assert target["instant"] is True
    assert target["format"] == "table"
    (organize,) = [t for t in panel["transformations"] if t["id"] == "organize"]
    hidden = {k for k, v in organize["options"]["excludeByName"].items() if v}
    assert {"Time", "Value", "__name__", "instance", "job"} <= hidden
    order = organize["options"]["indexByName"]
    assert sorted(order, key=order.get) == STATION_COLUMNS
    assert panel["fieldConfig"]["defaults"]["custom"]["filterable"] is True


def test_disappeared_stations_match_by_station_and_need_a_current_fleet():
    panel = fleet_panel("Stations that disappeared")
    expr = " ".join(panel["targets"][0]["expr"].split())
    assert "max_over_time(beenergised_charging_station_info" in expr
    assert "unless on (mandant, station_id)" in expr
    assert expr.endswith(
        'and on (mandant) group by (mandant) (beenergised_charging_stations{mandant=~"$mandant"})'
    )
    assert "firmware" in panel["description"] and "stale" in panel["description"]
    assert "*Station alerts firing*" in panel["description"]


def test_station_alerts_table_shows_the_alerts_as_notified():
    panel = fleet_panel("Station alerts firing")
    (target,) = panel["targets"]
    (matchers,) = selectors(target["expr"], ALERTS)
    assert target["expr"] == f"ALERTS{matchers}"  # the alerts themselves, nothing derived
    assert set(alert_names(matchers)) == STATION_ALERTS
    assert target["instant"] is True
    assert target["format"] == "table"
    (organize,) = [t for t in panel["transformations"] if t["id"] == "organize"]
    hidden = {k for k, v in organize["options"]["excludeByName"].items() if v}
    assert {"Time", "Value", "__name__", "instance", "job", "alertstate", "severity"} <= hidden
    order = organize["options"]["indexByName"]
    columns = sorted(order, key=order.get)
    assert columns == ["alertname", "mandant", "label", "charge_box_identity", "station_id"]
    # every label the notification names a station by is a column
    for name in STATION_ALERTS:
        annotations = alert_rules()[name]["annotations"]
        notified = re.findall(
            r"\$labels\.(\w+)", annotations["summary"] + annotations["description"]
        )
        assert set(notified) <= set(columns), name
    renamed = organize["options"]["renameByName"]
    (override,) = panel["fieldConfig"]["overrides"]
    assert override["matcher"] == {"id": "byName", "options": renamed["alertname"]}
    (mappings,) = [p["value"] for p in override["properties"] if p["id"] == "mappings"]
    (mapping,) = mappings
    texts = {value: shown["text"] for value, shown in mapping["options"].items()}
    assert texts == {
        "BeenergisedStationDisappeared": "Disappeared",
        "BeenergisedStationAdded": "Added",
    }
    description = panel["description"]
    assert "Alertmanager" in description and "15 minutes" in description
    assert "http" not in description


def test_fleet_alerts_stat_counts_every_fleet_change_alert_and_shows_zero():
    panel = fleet_panel("Fleet alerts firing")
    (target,) = panel["targets"]
    (matchers,) = selectors(target["expr"], ALERTS)
    assert target["expr"] == f"count(ALERTS{matchers}) or vector(0)"
    assert set(alert_names(matchers)) == FLEET_CHANGE_ALERTS
    assert target["instant"] is True
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [(step["color"], step["value"]) for step in steps] == [("green", None), ("orange", 1)]
    for name in FLEET_CHANGE_ALERTS:
        assert name in panel["description"]


@pytest.mark.parametrize(
    ("matchers", "names"),
    [
        ('{alertname="A", mandant=~".*"}', ["A"]),
        ('{alertstate="firing", alertname=~"A|B"}', ["A", "B"]),
        ('{alertname!="A"}', []),
        ('{mandant=~".*"}', []),
        ("", []),
    ],
)
def test_alert_names(matchers, names):
    assert alert_names(matchers) == names


@pytest.mark.parametrize("title", ["On target firmware", "Firmware rollout"])
def test_rollout_panels_show_percent_of_the_fleet_per_mandant_and_target(title):
    panel = fleet_panel(title)
    (target,) = panel["targets"]
    expr = " ".join(target["expr"].split())
    # group_left () keeps the target label of the left side; one-to-one matching would drop it
    assert expr == (
        "100 * sum by (mandant, target) "
        '(beenergised_charging_stations_firmware_target{mandant=~"$mandant"})'
        " / on (mandant) group_left () "
        'sum by (mandant) (beenergised_charging_stations{mandant=~"$mandant"})'
    )
    defaults = panel["fieldConfig"]["defaults"]
    assert (defaults["unit"], defaults["min"], defaults["max"]) == ("percent", 0, 100)
    assert "--firmware.target" in panel["description"]


def test_rollout_legend_names_the_target():
    (target,) = fleet_panel("Firmware rollout")["targets"]
    assert "{{target}}" in target["legendFormat"]


def test_duplicate_identities_count_distinct_stations_with_an_identity():
    # As the exporter counts them: stations, not series (two exporters of one mandant), and an
    # empty identity is never a duplicate.
    panel = fleet_panel("Stations sharing a charge box identity")
    expr = " ".join(panel["targets"][0]["expr"].split())
    assert expr.endswith(
        "and on (mandant, charge_box_identity) (count by (mandant, charge_box_identity)"
        " (group by (mandant, charge_box_identity, station_id)"
        ' (beenergised_charging_station_info{mandant=~"$mandant", charge_box_identity!=""}))'
        " > 1)"
    )
    assert panel["options"]["sortBy"] == [{"desc": False, "displayName": "Charge box identity"}]


def test_datasource_provisioning():
    config = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert config["apiVersion"] == 1
    (source,) = config["datasources"]
    assert source["name"] == "Prometheus"
    assert source["type"] == "prometheus"
    assert source["uid"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["access"] == "proxy"
    assert source["isDefault"] is True


def test_dashboard_provisioning_loads_the_dashboard_directory():
    config = yaml.safe_load((PROVISIONING / "dashboards" / "beenergised.yml").read_text())
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == "be.ENERGISED"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert DASHBOARD_DIR == ROOT / "grafana" / "dashboards"  # what compose mounts there


def test_panel_queries_substitute_the_grafana_variables():
    dashboard = {
        "panels": [
            {
                "title": "rate",
                "description": "plain",
                "targets": [
                    {
                        "refId": "A",
                        "expr": 'sum(rate(x_total{mandant=~"$mandant",'
                        ' firmware_version=~"${firmware_version}"}[$__rate_interval]))',
                    },
                    {"refId": "B", "expr": "y", "hide": True},
                ],
            },
            {
                "title": "row",
                "type": "row",
                "panels": [
                    {
                        "title": "nested",
                        "description": f"{EMPTY_MARKER}: only after a change.",
                        "targets": [
                            {
                                "refId": "A",
                                "expr": 'max_over_time(y{mandant=~"${mandant:regex}"}[$__range])'
                                " / $__range_s + z[$__interval]",
                            }
                        ],
                    }
                ],
            },
        ]
    }
    assert panel_queries(dashboard) == [
        ("rate", 'sum(rate(x_total{mandant=~".*", firmware_version=~".*"}[1m]))', False),
        ("nested", 'max_over_time(y{mandant=~".*"}[1h]) / 3600 + z[1m]', True),
    ]


def test_substitute_leaves_the_datasource_and_refuses_unknown_variables():
    assert substitute("${datasource}") == "${datasource}"
    with pytest.raises(KeyError, match="mandnat"):
        substitute('x{mandant=~"$mandnat"}')


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('beenergised_up{mandant=~".*"}', {"beenergised_up"}),
        (
            'sum by (mandant, code) (rate(beenergised_api_requests_total{code!~"2.."}[5m]))'
            " / on (mandant) group_left () sum without (code) (x_total offset 1h)",
            {"beenergised_api_requests_total", "x_total"},
        ),
        ("time() - a_timestamp_seconds > bool 1e3", {"a_timestamp_seconds"}),
        ("count(up == 0) or vector(0) unless nan_metric and inf", {"up", "nan_metric"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
        ("max_over_time(rule:metric:sum[1h:1m]) @ start()", {"rule:metric:sum"}),
    ],
)
def test_metric_names(expr, names):
    assert metric_names(expr) == names


def test_the_exposition_used_here_has_every_family():
    names = set(exposition())
    assert "beenergised_charging_station_info" in names
    assert "beenergised_charging_stations_added_total" in names
    assert "beenergised_token_expiry_timestamp_seconds" in names
    assert "process_resident_memory_bytes" in names
