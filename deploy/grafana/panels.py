"""The generic parts of the lineinspect Grafana dashboard: panel and query builders, the grid.

Imported by build_dashboard.py (run as a script, so this folder is on sys.path); the rows and
what they show are there. Pure standard library: each function returns plain JSON-able dicts and
strings, in a fixed key order, so the generated JSON stays byte-stable.
"""

from __future__ import annotations

from typing import Any

DS = {"type": "prometheus", "uid": "prometheus"}  # deploy/grafana/provisioning/datasources
L = 'line=~"$line"'
LC = 'line=~"$line", camera=~"$camera"'
RI = "$__rate_interval"

Panel = dict[str, Any]


def target(expr: str, legend: str = "", ref: str = "A", **extra: Any) -> dict[str, Any]:
    return {
        "datasource": DS,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "refId": ref,
    } | extra


def targets(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(pairs)]


def thresholds(*steps: tuple[float, str], base: str = "green") -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"color": base, "value": None}]
        + [{"color": color, "value": value} for value, color in steps],
    }


def timeseries(
    title: str,
    tgts: list[dict[str, Any]],
    unit: str = "short",
    description: str = "",
    stack: bool = False,
    limits: tuple[float, float] | None = None,
    steps: tuple[tuple[float, str], ...] = (),
    overrides: list[dict[str, Any]] | None = None,
) -> Panel:
    custom: dict[str, Any] = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 20 if stack else 0,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "thresholdsStyle": {"mode": "dashed" if steps else "off"},
    }
    defaults: dict[str, Any] = {"unit": unit, "custom": custom, "thresholds": thresholds(*steps)}
    if limits is not None:
        defaults["min"], defaults["max"] = limits
    else:
        defaults["min"] = 0
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": tgts,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(
    title: str,
    expr: str,
    unit: str = "short",
    description: str = "",
    steps: tuple[tuple[float, str], ...] = (),
    mappings: list[dict[str, Any]] | None = None,
    base: str = "green",
) -> Panel:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(expr, instant=True)],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": thresholds(*steps, base=base),
                "mappings": mappings or [],
                "color": {"mode": "thresholds"},
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        },
    }


# A stat panel's value mapping of a 0/1 gauge.
UP_MAPPING = [
    {
        "type": "value",
        "options": {
            "0": {"text": "DOWN", "color": "red", "index": 0},
            "1": {"text": "UP", "color": "green", "index": 1},
        },
    }
]


def up_down(title: str, tgts: list[dict[str, Any]], description: str = "") -> Panel:
    """A state timeline of a 0/1 gauge: red gaps are outages."""
    return {
        "type": "state-timeline",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": tgts,
        "fieldConfig": {
            "defaults": {
                "color": {"mode": "thresholds"},
                "thresholds": thresholds((1, "green"), base="red"),
                "mappings": [
                    {
                        "type": "value",
                        "options": {
                            "0": {"text": "down", "color": "red", "index": 0},
                            "1": {"text": "up", "color": "green", "index": 1},
                        },
                    }
                ],
            },
            "overrides": [],
        },
        "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.8},
    }


def table(title: str, expr: str, description: str = "", hide: tuple[str, ...] = ()) -> Panel:
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(expr, format="table", instant=True)],
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm"},
        "transformations": [
            {
                "id": "organize",
                "options": {
                    "excludeByName": dict.fromkeys(("Time", "Value", "__name__", *hide), True)
                },
            }
        ],
    }


def zero_for(expr: str, label: str) -> str:
    """`expr`'s series at 0 with `label`="none": the fallback of a counter not yet used."""
    return f'label_replace(0 * {expr}, "{label}", "none", "", "")'


def quantile(q: float, metric: str, sel: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{sel}}}[{RI}])))"


def per_s(by: str, metric: str, sel: str, fn: str = "rate") -> str:
    """Per-second rate (or increase) of a counter over the panel's rate interval, summed by `by`."""
    return f"sum by ({by}) ({fn}({metric}{{{sel}}}[{RI}]))"


# -- the grid and the dashboard around it ----------------------------------------------------
# (title, panels, panel height, panels side by side, variable the row repeats on)
Row = tuple[str, list[Panel], int, int, str | None]


def layout(rows: list[Row]) -> list[Panel]:
    """The rows one under the other, each row's panels side by side; ids and grid positions."""
    panels: list[Panel] = []
    y, next_id = 0, 1
    for title, row_panels, height, per_line, repeat in rows:
        row: Panel = {
            "type": "row",
            "title": title,
            "collapsed": False,
            "panels": [],
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            "id": next_id,
        }
        if repeat:
            row["repeat"] = repeat
        panels.append(row)
        y, next_id = y + 1, next_id + 1
        width = 24 // per_line
        for i, panel in enumerate(row_panels):
            if i and i % per_line == 0:
                y += height
            panel["id"] = next_id
            panel["gridPos"] = {"h": height, "w": width, "x": (i % per_line) * width, "y": y}
            panels.append(panel)
            next_id += 1
        y += height
    return panels


def dashboard(panels: list[Panel]) -> dict[str, Any]:
    """The dashboard around `panels`: its uid, time settings and the $line / $camera variables."""
    variable = {
        "type": "query",
        "datasource": DS,
        "refresh": 2,  # on time range change: cameras come and go
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
        "options": [],
        "regex": "",
        "skipUrlSync": False,
    }
    return {
        "uid": "lineinspect",
        "title": "lineinspect: inspection line",
        "description": "Throughput, verdicts, latency, drift and delivery of lineinspect lines. "
        "Generated by deploy/grafana/build_dashboard.py.",
        "tags": ["lineinspect"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {
            "list": [
                variable
                | {
                    "name": "line",
                    "label": "Line",
                    "query": "label_values(lineinspect_build_info, line)",
                    "definition": "label_values(lineinspect_build_info, line)",
                },
                variable
                | {
                    "name": "camera",
                    "label": "Camera",
                    "query": 'label_values(lineinspect_camera_up{line=~"$line"}, camera)',
                    "definition": 'label_values(lineinspect_camera_up{line=~"$line"}, camera)',
                },
            ]
        },
        "panels": panels,
    }
