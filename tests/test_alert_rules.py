"""infra/prometheus/agentwatch-alerts.yml: well formed, and every metric it names is one
the API or a dataflow process exports (a renamed metric would silence its alert without a
word)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "infra" / "prometheus" / "agentwatch-alerts.yml"


def exported() -> set[str]:
    """The sample names api/prometheus.py (with sinks/loader_metrics.py) and the dataflow's
    registry export (counters
    with ``_total``, summaries with ``_count`` and ``_sum``)."""
    source = (ROOT / "api" / "prometheus.py").read_text()
    source += (ROOT / "sinks" / "loader_metrics.py").read_text()  # the loader's families
    names: set[str] = set()
    for kind, name in re.findall(r'(\w+)\(\s*"(agentwatch_\w+)"', source):
        if kind == "CounterMetricFamily":
            names.add(f"{name}_total")
        elif kind == "SummaryMetricFamily":
            names |= {f"{name}_count", f"{name}_sum"}
        else:
            names.add(name)
    return names | dataflow_exported()


def dataflow_exported() -> set[str]:
    """The sample names of a dataflow process's ``/metrics``, read from its registry (a
    labelled family has no sample until a label is used: its names come from its type)."""
    from dataflows.metrics import DataflowMetrics

    suffixes = {"counter": ("_total",), "summary": ("_count", "_sum")}
    return {
        name
        for family in DataflowMetrics().registry.collect()
        for name in [sample.name for sample in family.samples]
        + [family.name + suffix for suffix in suffixes.get(family.type, ("",))]
        if name.startswith("agentwatch_") and not name.endswith("_created")
    }


def test_the_rules_are_well_formed_and_name_only_exported_metrics() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) >= 8
    names = exported()
    assert {"agentwatch_up", "agentwatch_loader_errors_total"} <= names  # the scan works
    for rule in rules:
        assert re.fullmatch(r"Agentwatch[A-Za-z]+", rule["alert"]), rule
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
        used = set(re.findall(r"agentwatch_\w+", rule["expr"]))
        assert used and used <= names, f"{rule['alert']}: {sorted(used - names)} not exported"
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule
    assert len({rule["alert"] for rule in rules}) == len(rules)
