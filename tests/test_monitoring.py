"""The monitoring kit (k8s/monitoring/): every expression names a metric the service exports, every alert
has its runbook section, and the ServiceMonitor finds the Service."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import Counter, Gauge, Histogram

from services import metrics

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "k8s" / "monitoring"


def exported() -> set[str]:
    """Every series name the service's metrics expose."""
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            names |= {f"{value._name}_total", f"{value._name}_created"}
        elif isinstance(value, Histogram):
            names |= {f"{value._name}{suffix}" for suffix in ("_bucket", "_count", "_sum", "_created")}
        elif isinstance(value, Gauge):
            names.add(value._name)
    return names


def expressions() -> list[str]:
    rules = yaml.safe_load((KIT / "prometheusrule.yaml").read_text())
    found = [rule["expr"] for group in rules["spec"]["groups"] for rule in group["rules"]]
    dashboard = json.loads((KIT / "dashboard.json").read_text())
    return found + [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_expression_names_an_exported_metric() -> None:
    known = exported()
    assert "wecom_dify_callbacks_total" in known and "wecom_dify_callback_seconds_bucket" in known
    for expr in expressions():
        used = set(re.findall(r"wecom_dify_[a-z_]+", expr))
        assert used and used <= known, (expr, used - known)


def test_every_alert_has_a_runbook_section() -> None:
    readme = (ROOT / "README.md").read_text()
    anchors = {"#" + h.lower() for h in re.findall(r"^#### (\w+)$", readme, flags=re.M)}
    rules = yaml.safe_load((KIT / "prometheusrule.yaml").read_text())
    for rule in (r for group in rules["spec"]["groups"] for r in group["rules"]):
        url: str = rule["annotations"]["runbook_url"]
        assert url == f"README.md#{rule['alert'].lower()}" and url.removeprefix("README.md") in anchors, rule["alert"]


def test_the_service_monitor_finds_the_service_and_the_kit_lists_its_files() -> None:
    monitor: dict[str, Any] = yaml.safe_load((KIT / "servicemonitor.yaml").read_text())
    service = yaml.safe_load((ROOT / "k8s" / "base" / "service-metrics.yaml").read_text())  # /metrics only
    kustomization = yaml.safe_load((ROOT / "k8s" / "base" / "kustomization.yaml").read_text())
    labels = {**service["metadata"].get("labels", {}), **kustomization["labels"][0]["pairs"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    kit = yaml.safe_load((KIT / "kustomization.yaml").read_text())
    listed = set(kit["resources"]) | {f for g in kit["configMapGenerator"] for f in g["files"]}
    assert listed == {p.name for p in KIT.iterdir()} - {"kustomization.yaml"}
