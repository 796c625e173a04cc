#!/usr/bin/env python3
"""Static checks of the Grafana dashboard and the compose observability services (no
Docker here): the dashboard parses, every panel has a query, every metric a query names is
one the code exports (or one Prometheus makes itself), panels do not overlap, and
docker-compose.yml provisions Prometheus and Grafana from deploy/.

Also checks the alert rules against the same metric list, so a renamed metric breaks
scripts/test instead of silencing an alert.

Usage: python3 scripts/lib/check_dashboard.py  (from the repository root; exit 1 on errors)
"""
import json
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy/grafana/dashboards"
RULES = ROOT / "deploy/prometheus/rules"
COMPOSE = ROOT / "docker-compose.yml"

# Series Prometheus makes itself.
BUILTIN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
# PromQL words that look like metric names.
PROMQL = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "delta", "by", "without",
    "histogram_quantile", "time", "absent", "and", "or", "unless", "on", "ignoring",
    "group_left", "group_right", "topk", "bottomk", "quantile", "stddev", "offset", "bool",
    "clamp_min", "clamp_max", "abs", "vector", "scalar", "label_replace", "le", "humanize",
}


def exported_metrics():
    """Metric names the Rust code registers, with the histogram series names."""
    names = set()
    pattern = re.compile(r'metrics::(counter|gauge|histogram)!\(\s*"([a-z_:][a-z0-9_:]*)"')
    for path in ROOT.glob("*/src/**/*.rs"):
        for kind, name in pattern.findall(path.read_text()):
            names.add(name)
            if kind == "histogram":
                names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    # Added by the queue runtime (circuit breaker), which reports held kinds.
    names.update({"queue_kind_held", "queue_kind_held_since_seconds"})
    return names


def metrics_in(expr):
    """Identifiers in a PromQL expression that name series (not functions, labels, words)."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    found = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word = match.group(0)
        rest = expr[match.end():].lstrip()
        if word in PROMQL or rest.startswith("(") or re.fullmatch(r"\d+[smhdwy]?", word):
            continue
        found.add(word)
    return found


def main():
    errors = []
    known = exported_metrics() | BUILTIN
    dashboards = sorted(DASHBOARDS.glob("*.json"))
    if not dashboards:
        errors.append(f"no dashboard in {DASHBOARDS}")
    for path in dashboards:
        try:
            dashboard = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            errors.append(f"{path}: not JSON: {err}")
            continue
        if not dashboard.get("uid") or not dashboard.get("title"):
            errors.append(f"{path}: a dashboard needs a uid and a title")
        cells = set()
        for panel in dashboard.get("panels", []):
            title = panel.get("title", "?")
            grid = panel.get("gridPos", {})
            for dx in range(grid.get("w", 0)):
                for dy in range(grid.get("h", 0)):
                    cell = (grid.get("x", 0) + dx, grid.get("y", 0) + dy)
                    if cell in cells:
                        errors.append(f"{path.name}: panel {title!r} overlaps another")
                        break
                    cells.add(cell)
                else:
                    continue
                break
            if panel.get("type") == "row":
                continue
            targets = panel.get("targets", [])
            if not targets:
                errors.append(f"{path.name}: panel {title!r} has no query")
            for target in targets:
                if target.get("datasource", {}).get("uid") != "tasklane-prometheus":
                    errors.append(f"{path.name}: panel {title!r} does not use the provisioned data source")
                names = metrics_in(target.get("expr", ""))
                if not names:
                    errors.append(f"{path.name}: panel {title!r} queries no metric")
                for name in sorted(names - known):
                    errors.append(f"{path.name}: panel {title!r} queries unknown metric {name}")
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text()).get("groups", []):
            for rule in group.get("rules", []):
                for name in sorted(metrics_in(str(rule.get("expr", ""))) - known):
                    errors.append(f"{path.name}: rule {rule.get('alert')} uses unknown metric {name}")
    services = yaml.safe_load(COMPOSE.read_text()).get("services", {})
    for service, mount in [("prometheus", "./deploy/prometheus"), ("grafana", "./deploy/grafana")]:
        volumes = services.get(service, {}).get("volumes", [])
        if not any(str(v).startswith(mount) for v in volumes):
            errors.append(f"docker-compose.yml: service {service} does not mount {mount}")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
