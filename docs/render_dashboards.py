"""Render the dashboards' panels to PNG from Prometheus query results.

This is not Grafana: it lays each dashboard's panels out on a grid as Grafana
would (``gridPos``) and draws the results of their queries with matplotlib, so
the documentation can show what the dashboards show on real data without a
Grafana server. Input is a JSON file mapping names from
``tests/promql_inventory.py`` to ``{"expr": ..., "result": ...}``, where
``result`` is the ``data.result`` of a Prometheus ``query_range`` (a matrix) or
``query`` (a vector), and optionally ``"_variables"``: the Grafana variables the
queries ran with (the VM suite writes them), used in titles. Output is one PNG
per dashboard, ``<uid>.png``. No panel's drawing may reach into another's cell:
``overlaps`` finds any that do, and the tests fail on them.

    python docs/render_dashboards.py RESULTS.json [--out docs/img] \
        [--var ovs-port/port=vm1 ...]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "dashboards"
OUT_DIR = Path(__file__).resolve().parent / "img"

# Size of one Grafana grid unit: 24 columns across, rows of 30 px against
# columns of about 80 px on a 1920 px screen.
COLUMN_INCHES = 0.8
ROW_INCHES = 0.3
DPI = 80
MAX_LEGEND_ENTRIES = 6

_PREFIXES = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ")]
_BINARY = [(2.0**40, "TiB"), (2.0**30, "GiB"), (2.0**20, "MiB"), (2.0**10, "KiB"), (1.0, "B")]


def _si(value: float, suffix: str) -> str:
    if value == 0 or not math.isfinite(value):
        return f"0 {suffix}".strip() if value == 0 else str(value)
    for factor, prefix in _PREFIXES:
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{suffix}".strip()
    return f"{value:.3g} {suffix}".strip()


def _binary(value: float) -> str:
    for factor, suffix in _BINARY:
        if abs(value) >= factor:
            return f"{value / factor:.3g} {suffix}"
    return f"{value:.3g} B"


def _seconds(value: float) -> str:
    if value != 0 and abs(value) < 1:
        return _si(value, "s")
    return f"{value:.3g} s"


# Grafana unit id -> (how a value is written, what the axis is labelled).
UNITS: dict[str, tuple[Callable[[float], str], str]] = {
    "pps": (lambda v: _si(v, "p/s"), "packets/s"),
    "Bps": (lambda v: _si(v, "B/s"), "bytes/s"),
    "percentunit": (lambda v: f"{v * 100:.3g}%", "percent"),
    "s": (_seconds, "seconds"),
    "bytes": (_binary, "bytes"),
    "decbytes": (lambda v: _si(v, "B"), "bytes"),
    "short": (lambda v: _si(v, ""), ""),
    "none": (lambda v: f"{v:g}", ""),
}


def format_value(unit: str, value: float) -> str:
    """A value written as Grafana would for ``unit`` (the units the dashboards use)."""
    formatter = UNITS.get(unit, UNITS["short"])[0]
    return formatter(value)


@dataclass(frozen=True)
class Series:
    """One line (or one row) of a panel: its legend and samples."""

    legend: str
    labels: dict[str, str]
    times: list[float]
    values: list[float]


def legend_text(template: str, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: ``{{label}}`` replaced by the label's value."""
    if not template:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__") + "}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), template)


def _series(result: list[dict[str, Any]], legend: str) -> list[Series]:
    found = []
    for item in result:
        samples = item.get("values") or ([item["value"]] if "value" in item else [])
        labels = {str(k): str(v) for k, v in item.get("metric", {}).items()}
        found.append(
            Series(
                legend=legend_text(legend, labels),
                labels=labels,
                times=[float(ts) for ts, _ in samples],
                values=[float(value) for _, value in samples],
            )
        )
    return found


def panel_series(uid: str, panel: dict[str, Any], results: dict[str, Any]) -> list[Series]:
    """Every series of every query of a panel, in query order."""
    found: list[Series] = []
    for target in panel.get("targets") or []:
        entry = results.get(f"dashboard/{uid}/{panel['id']}/{target['refId']}")
        if entry is not None:
            found.extend(_series(entry.get("result") or [], target.get("legendFormat", "")))
    return found


def _unit(panel: dict[str, Any]) -> str:
    return str(panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short"))


def _limits(panel: dict[str, Any]) -> list[float]:
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    if defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode") != "line":
        return []
    steps = defaults.get("thresholds", {}).get("steps", [])
    return [float(step["value"]) for step in steps if step.get("value") is not None]


def _no_data(ax: Axes, panel: dict[str, Any]) -> None:
    text = panel.get("fieldConfig", {}).get("defaults", {}).get("noValue") or "No data"
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#888888", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])


def _time_axis(ax: Axes, start: float, end: float) -> None:
    """Ticks at round clock times (UTC), at most about eight of them."""
    span = max(end - start, 1.0)
    steps = (10, 15, 30, 60, 300, 600, 900, 1800, 3600, 7200, 21600, 43200)
    step = next((s for s in steps if span / s <= 8), 86400)
    first = math.ceil(start / step) * step
    ax.set_xticks([first + i * step for i in range(int((end - first) // step) + 1)])
    ax.set_xlim(start, end)
    # Seconds only for a range of a few minutes (a short test run).
    clock = "%H:%M:%S" if step < 60 else "%H:%M"
    ax.xaxis.set_major_formatter(
        FuncFormatter(lambda v, _pos: datetime.fromtimestamp(v, tz=UTC).strftime(clock))
    )


def draw_timeseries(ax: Axes, panel: dict[str, Any], series: Sequence[Series]) -> None:
    unit = _unit(panel)
    formatter, label = UNITS.get(unit, UNITS["short"])
    drawn = [s for s in series if s.times]
    if not drawn:
        _no_data(ax, panel)
        return
    # Like the dashboards' legends: sorted by the maximum, largest first.
    drawn.sort(key=lambda s: max((v for v in s.values if math.isfinite(v)), default=0.0), reverse=True)
    for index, line in enumerate(drawn):
        ax.plot(
            line.times, line.values, linewidth=1.2, label=line.legend if index < MAX_LEGEND_ENTRIES else None
        )
    for limit in _limits(panel):
        ax.axhline(limit, color="#d44a3a", linestyle="--", linewidth=1)
    highest = max([v for s in drawn for v in s.values if math.isfinite(v)] + _limits(panel) + [0.0])
    ax.set_ylim(0, highest * 1.15 if highest > 0 else 1.0)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: formatter(v)))
    _time_axis(ax, min(t for s in drawn for t in s.times), max(t for s in drawn for t in s.times))
    ax.tick_params(labelsize=7)
    ax.grid(True, color="#e5e5e5", linewidth=0.6)
    if label:
        ax.set_ylabel(label, fontsize=7)
    more = len(drawn) - MAX_LEGEND_ENTRIES
    handles, labels = ax.get_legend_handles_labels()
    if more > 0:
        labels[-1] += f"  (+{more} more)"
    ax.legend(handles, labels, fontsize=6, loc="upper left", framealpha=0.7)


def draw_stat(ax: Axes, panel: dict[str, Any], series: Sequence[Series]) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    shown = [s for s in series if s.values]
    if not shown:
        _no_data(ax, panel)
        return
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    steps = defaults.get("thresholds", {}).get("steps", [])
    # Value mappings (type "value"): the text Grafana shows instead of the number.
    mapped = {
        key: result.get("text", key)
        for mapping in defaults.get("mappings") or []
        if mapping.get("type") == "value"
        for key, result in mapping.get("options", {}).items()
    }
    count = len(shown)
    for index, item in enumerate(shown):
        value = item.values[-1]
        text = mapped.get(f"{value:g}", format_value(_unit(panel), value))
        color = "#73bf69"
        for step in steps:
            if step.get("value") is None or value >= float(step["value"]):
                color = "#73bf69" if step.get("color") == "green" else "#d44a3a"
        y = 1 - (index + 0.5) / count
        ax.text(
            0.5,
            y + 0.12 / count,
            text,
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=min(28 if text == format_value(_unit(panel), value) else 16, 60 / count),
            color=color,
            weight="bold",
        )
        ax.text(
            0.5, y - 0.22 / count, item.legend, ha="center", va="center", transform=ax.transAxes, fontsize=7
        )


# Height of one table row, header included, in inches (8-point text with padding).
TABLE_ROW_INCHES = 0.22


def draw_table(ax: Axes, panel: dict[str, Any], series: Sequence[Series]) -> None:
    ax.set_axis_off()
    if not series:
        _no_data(ax, panel)
        return
    hidden: set[str] = set()
    for transformation in panel.get("transformations") or []:
        if transformation.get("id") == "organize":
            hidden |= {k for k, v in transformation.get("options", {}).get("excludeByName", {}).items() if v}
    columns = sorted({k for s in series for k in s.labels} - hidden)
    rows = [[s.labels.get(column, "") for column in columns] for s in series]
    # As many rows as the panel's cell holds, and a last one saying how many more there are:
    # a table left to grow would draw over the panels below it.
    inches = ax.get_position().height * ax.get_figure().get_figheight()  # type: ignore[union-attr]
    fits = max(1, int(inches / TABLE_ROW_INCHES) - 1)
    if len(rows) > fits:
        more = len(rows) - fits + 1
        rows = [*rows[: fits - 1], [f"(+{more} more rows)"] + [""] * (len(columns) - 1)]
    height = min(1.0, (len(rows) + 1) * TABLE_ROW_INCHES / inches)
    cells = ax.table(cellText=rows, colLabels=columns, cellLoc="left", bbox=(0.0, 1.0 - height, 1.0, height))
    cells.auto_set_font_size(False)
    cells.set_fontsize(8)


def _titled(text: str, uid: str, variables: dict[str, str]) -> str:
    """A title with the Grafana variables the results were queried with."""

    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        return variables.get(f"{uid}/{name}", variables.get(name, match[0]))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, text)


def render_dashboard(board: dict[str, Any], results: dict[str, Any], variables: dict[str, str]) -> Figure:
    """One figure with every panel of ``board`` where Grafana would put it."""
    panels = board.get("panels", [])
    height_units = max((p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels), default=1)
    header_units = 3
    total_units = height_units + header_units
    fig = plt.figure(figsize=(24 * COLUMN_INCHES, total_units * ROW_INCHES), dpi=DPI)
    fig.text(
        0.01, 1 - 1.0 / total_units, board.get("title", board["uid"]), fontsize=16, weight="bold", va="center"
    )
    fig.text(
        0.01,
        1 - 2.1 / total_units,
        "Rendered with matplotlib from the results of the dashboard's Prometheus queries; "
        "not a Grafana screenshot.",
        fontsize=9,
        color="#555555",
        va="center",
    )
    uid = board["uid"]
    for panel in panels:
        grid = panel["gridPos"]
        top = 1 - (header_units + grid["y"]) / total_units
        if panel["type"] == "row":
            fig.text(
                0.01,
                top - 0.5 / total_units,
                _titled(panel["title"], uid, variables),
                fontsize=12,
                weight="bold",
                va="center",
                gid=f"row {panel['id']} {panel.get('title', '')!r}",
            )
            continue
        # Leave room inside the cell for the title, tick labels and the gaps between panels.
        left = (grid["x"] + 1.1) / 24
        width = (grid["w"] - 1.4) / 24
        bottom = 1 - (header_units + grid["y"] + grid["h"] - 0.8) / total_units
        height = (grid["h"] - 2.0) / total_units
        ax = fig.add_axes((left, bottom, width, height))
        ax.set_gid(f"panel {panel['id']} {panel.get('title', '')!r}")
        unit_label = UNITS.get(_unit(panel), UNITS["short"])[1]
        title = _titled(panel.get("title", ""), uid, variables) + (f"  [{unit_label}]" if unit_label else "")
        ax.set_title(title, fontsize=9, loc="left")
        series = panel_series(uid, panel, results)
        if panel["type"] == "stat":
            draw_stat(ax, panel, series)
        elif panel["type"] == "table":
            draw_table(ax, panel, series)
        else:
            draw_timeseries(ax, panel, series)
    return fig


def overlaps(fig: Figure) -> list[str]:
    """Pairs of panels (or row titles) whose drawings overlap, and any drawn off the figure.

    Each panel's extent is all it draws: title, axes, tick labels, legend, table cells.
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    extents = [(ax.get_gid(), ax.get_tightbbox(renderer)) for ax in fig.axes if ax.get_gid()]
    extents += [(text.get_gid(), text.get_window_extent(renderer)) for text in fig.texts if text.get_gid()]
    found = []
    for index, (name, box) in enumerate(extents):
        if box.x0 < 0 or box.y0 < 0 or box.x1 > fig.bbox.x1 or box.y1 > fig.bbox.y1:
            found.append(f"{name} reaches off the figure")
        for other, other_box in extents[index + 1 :]:
            width = min(box.x1, other_box.x1) - max(box.x0, other_box.x0)
            height = min(box.y1, other_box.y1) - max(box.y0, other_box.y0)
            if width > 1 and height > 1:  # more than a pixel each way
                found.append(f"{name} overlaps {other}")
    return found


def render_all(
    results: dict[str, Any],
    out_dir: Path,
    dashboard_dir: Path = DASHBOARD_DIR,
    variables: dict[str, str] | None = None,
) -> list[Path]:
    """Render every dashboard in ``dashboard_dir``; returns the PNGs written.

    ``variables`` are those the queries were run with (as given to
    ``tests/promql_inventory.all_exprs``); they fill in panel and row titles.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    # The VM suite stores the variables its queries ran with beside the results.
    variables = {**results.get("_variables", {}), **(variables or {})}
    for path in sorted(dashboard_dir.glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        fig = render_dashboard(board, results, variables)
        found = overlaps(fig)
        if found:
            plt.close(fig)
            raise ValueError(f"{path.name}: panels overlap in the rendering: {'; '.join(found)}")
        target = out_dir / f"{board['uid']}.png"
        fig.savefig(target, dpi=DPI)
        plt.close(fig)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Render the dashboards to PNG from Prometheus query results."
    )
    parser.add_argument("results", type=Path, help="JSON: {name: {expr, result}} from the VM suite")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"output directory (default {OUT_DIR})")
    parser.add_argument("--dashboards", type=Path, default=DASHBOARD_DIR, help="directory of dashboard JSON")
    parser.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a variable the queries were run with, for titles (NAME may be UID/NAME); repeatable",
    )
    args = parser.parse_args(argv)
    variables = dict(item.split("=", 1) for item in args.var)
    results = json.loads(args.results.read_text(encoding="utf-8"))
    for path in render_all(results, args.out, args.dashboards, variables):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
