"""Write deploy/kubernetes/prometheus-operator/prometheusrule.yaml from prometheus/alerts.yml
(`make rules`).

The Prometheus Operator wants the alerting rules wrapped in a PrometheusRule; this keeps that
copy generated from the one rule file Prometheus loads, so the two never drift apart
(tests/test_deploy.py checks that the committed file is what this writes).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "prometheus" / "alerts.yml"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "prometheus-operator" / "prometheusrule.yaml"
HEADER = """\
# Generated from prometheus/alerts.yml: the rule groups are identical (tests/test_deploy.py
# checks it). Edit prometheus/alerts.yml, then regenerate this file with `make rules`.
# kustomization.yaml gives it the label your Prometheus' ruleSelector asks for
# (kube-prometheus-stack: `release: <Helm release name>`).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: beenergised-exporter
  labels:
    app.kubernetes.io/name: beenergised-exporter
    app.kubernetes.io/component: exporter
spec:
"""


def render(alerts: str) -> str:
    """The PrometheusRule for the text of an alerts file: from `groups:` on, under `spec:`."""
    body = alerts[alerts.index("\ngroups:") + 1 :]
    return HEADER + re.sub(r"(?m)^(?=.)", "  ", body)


def main() -> int:
    PROMETHEUS_RULE.write_text(render(ALERTS.read_text()))
    print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
