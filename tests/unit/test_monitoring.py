"""The monitoring files in deploy/: the alert rules pass ``promtool check rules`` and their
unit tests (``promtool test rules``); the Grafana dashboard reads its data source from the
``DS_PROMETHEUS`` template variable; and every metric a panel or a rule queries is one the
worker exports (``worker/ops/metrics.py``), so renaming a metric fails here. Each alert
links to its section of docs/operations.md, "Troubleshooting by symptom".

promtool comes from Debian's ``prometheus`` package (``.ci/run`` installs it); without it
these tests skip, except under CI=true, where they fail."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from worker.ops import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "provisioning-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
RUNBOOK = ROOT / "docs" / "operations.md"
IN_CI = os.environ.get("CI", "").lower() == "true"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# Scraped from oliver006/redis_exporter next to the worker, not exported by it.
REDIS_EXPORTER = {"redis_memory_used_bytes", "redis_memory_max_bytes"}


def exported() -> set[str]:
    """Every sample name the worker's endpoint can serve."""
    histograms = {f"{name}{suffix}" for name in metrics.HISTOGRAMS
                  for suffix in ("_bucket", "_sum", "_count")}
    return set(metrics.COUNTERS) | histograms | set(metrics.GAUGES)


# -- PromQL: the metric names an expression reads --------------------------------------------

_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", "group_left", "group_right"}
_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression: identifiers left once strings, label
    matchers, ranges and grouping clauses are removed that are neither a function (followed
    by a parenthesis) nor a keyword."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _CLAUSE.sub(" ", text)
    names: set[str] = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end():].lstrip().startswith("("):
            continue
        if match.group(0).lower() not in _KEYWORDS:
            names.add(match.group(0))
    return names


def test_metric_names_reads_names_and_skips_functions_labels_and_clauses() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, step) (rate('
            'provisioning_backend_call_seconds_bucket{step=~"a.b"}[$__rate_interval])))'
            ' / on() group_left max(provisioning_records offset 5m) > bool 1e3'
            ' unless absent(up) and provisioning_event_total')
    assert metric_names(expr) == {"provisioning_backend_call_seconds_bucket",
                                  "provisioning_records", "up", "provisioning_event_total"}


def test_a_renamed_metric_is_not_exported() -> None:
    """What the dashboard and rule checks below rely on: a misspelt name is caught."""
    assert "provisioning_events_total" in exported()
    assert metric_names("sum(rate(provisioning_event_total[5m]))") - exported() == {
        "provisioning_event_total"}
    assert "provisioning_transition_seconds_bucket" in exported()
    assert "provisioning_transition_seconds" not in exported()  # a histogram's own name


# -- the dashboard ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in panels(dashboard)
            for target in panel.get("targets", [])]


def test_the_dashboard_reads_from_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    assert dashboard["schemaVersion"] >= 39
    shown = [panel for panel in panels(dashboard) if panel["type"] != "row"]
    assert len(shown) >= 10
    for panel in shown:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_every_dashboard_query_reads_metrics_the_worker_exports(
    dashboard: dict[str, Any],
) -> None:
    for title, expr in queries(dashboard):
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= exported(), f"{title}: not exported: {sorted(names - exported())}"


def test_the_dashboard_shows_every_metric_family(dashboard: dict[str, Any]) -> None:
    """A new metric family needs a panel (or this list of what the dashboard reads)."""
    read = {name for _, expr in queries(dashboard) for name in metric_names(expr)}
    families = {name.removesuffix("_bucket").removesuffix("_count") for name in read}
    assert families >= {*metrics.COUNTERS, *metrics.HISTOGRAMS, *metrics.GAUGES}


def test_dashboard_panels_have_unique_ids_and_do_not_overlap(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


# -- the alert rules -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alerts() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in loaded["groups"] for rule in group["rules"] if "alert" in rule]


def test_every_alert_reads_metrics_the_worker_exports(alerts: list[dict[str, Any]]) -> None:
    for rule in alerts:
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        unknown = names - exported() - REDIS_EXPORTER
        assert not unknown, f"{rule['alert']}: not exported: {sorted(unknown)}"


def runbook_headings() -> list[tuple[int, str]]:
    """(level, GitHub's anchor) of the runbook's headings (outside code blocks), in order."""
    headings: list[tuple[int, str]] = []
    fenced = False
    for line in RUNBOOK.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (found := re.match(r"(#{1,6}) (.*)", line)):
            title = found.group(2).strip().lower()
            headings.append((len(found.group(1)),
                             re.sub(r"[^\w\- ]", "", title).replace(" ", "-")))
    return headings


def test_every_alert_has_a_summary_a_description_and_a_runbook_by_symptom(
    alerts: list[dict[str, Any]],
) -> None:
    headings = runbook_headings()
    anchors = [anchor for _, anchor in headings]
    start = anchors.index("troubleshooting-by-symptom")
    end = next(i for i in range(start + 1, len(headings)) if headings[i][0] <= 2)
    symptoms = anchors[start + 1:end]
    linked = set()
    for rule in alerts:
        notes = rule["annotations"]
        assert notes["summary"].strip() and notes["description"].strip(), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        link = urlsplit(notes["runbook_url"])
        assert (RULES.parent / link.path).resolve() == RUNBOOK, rule["alert"]
        assert anchors.count(link.fragment) == 1, f"{rule['alert']}: #{link.fragment}"
        assert link.fragment in symptoms, (
            f"{rule['alert']}: #{link.fragment} is not under docs/operations.md's "
            "Troubleshooting by symptom")
        assert rule["alert"] in RUNBOOK.read_text(encoding="utf-8"), rule["alert"]
        linked.add(link.fragment)
    assert linked == set(symptoms), "every symptom section is some alert's runbook"


def test_every_rule_unit_test_names_an_alert_of_the_rules(alerts: list[dict[str, Any]]) -> None:
    tested = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    assert tested["rule_files"] == [RULES.name]
    names = {case["alertname"] for test in tested["tests"] for case in test["alert_rule_test"]}
    assert names <= {rule["alert"] for rule in alerts}
    assert len(names) >= 2


# -- promtool --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not installed (Debian: apt-get install prometheus)"
        if IN_CI:
            pytest.fail(f"{message}; CI=true needs it")
        pytest.skip(message)
    return found


def run(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def test_promtool_checks_the_rules(promtool: str) -> None:
    done = run(promtool, "check", "rules", RULES.name, cwd=RULES.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_rule_unit_tests_pass(promtool: str) -> None:
    done = run(promtool, "test", "rules", RULE_TESTS.name, cwd=RULES.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_catches_a_broken_rule_and_a_changed_threshold(
    promtool: str, tmp_path: Path,
) -> None:
    """The two checks above are real ones."""
    text = RULES.read_text(encoding="utf-8")
    (tmp_path / RULES.name).write_text(text.replace("min(provisioning_store_up) == 0",
                                                    "min(provisioning_store_up == 0", 1))
    assert run(promtool, "check", "rules", RULES.name, cwd=tmp_path).returncode != 0
    (tmp_path / RULES.name).write_text(text.replace("> 0.9\n", "> 0.95\n", 1))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    done = run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert done.returncode != 0
    assert "ProvisioningRedisMemoryNearMax" in done.stdout + done.stderr


def test_every_dashboard_query_is_valid_promql(
    promtool: str, dashboard: dict[str, Any], tmp_path: Path,
) -> None:
    """promtool parses each panel's query as a recording rule (Grafana's $__rate_interval
    replaced by a duration, as Grafana does before sending it)."""
    rules = [{"record": f"dashboard:query:{number}",
              "expr": expr.replace("$__rate_interval", "1m")}
             for number, (_, expr) in enumerate(queries(dashboard))]
    assert all("$" not in rule["expr"] for rule in rules), "an unknown Grafana variable"
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run(promtool, "check", "rules", path.name, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout
