"""The adoption chart: small multiples, one panel per group on the same axes, and the national panel first.

Each panel shows penetration (observed solid, forecast dashed with its 80% band) and agent use the same way,
the two targets as dotted lines ending in a star at their date, and a line of text with the 2030 outlook and
the back-tested error. Sized for an A4 page (8.3 in wide); PNG or SVG by the file name.
"""

from __future__ import annotations

import math
import textwrap
from datetime import date
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, safe in servers and tests

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.ticker import PercentFormatter

from aiplus.adoption.outlook import Forecast
from aiplus.adoption.report import GroupReport, Report, definition_caption

FORMATS = (".png", ".svg")
A4_WIDTH_IN = 8.27
COLUMNS = 4
USE, AGENTS, TARGET = "#1f5fa8", "#d9730d", "#b22222"


def _line(ax, report: Report, group: GroupReport, forecast: Forecast | None, value, color, width) -> None:
    ax.plot(
        report.months, [value(c) for c in group.series], color=color, linewidth=width, solid_capstyle="butt"
    )
    if forecast is None or not forecast.band or forecast.model is None:
        return
    months = [b[0] for b in forecast.band]
    ax.plot(months, [b[1] for b in forecast.band], color=color, linewidth=width, linestyle=(0, (3, 2)))
    ax.fill_between(
        months, [b[2] for b in forecast.band], [b[3] for b in forecast.band], color=color, alpha=0.18, lw=0
    )


def _outlook(forecast: Forecast | None) -> str:
    if forecast is None or not forecast.targets:
        return ""
    t = forecast.targets[-1]
    if t.projected is None:
        return f"{t.date.year}: {t.status}"
    return f"{t.date.year} {t.projected:.0%} [{100 * t.low:.0f}–{t.high:.0%}] {t.status}"


def _trust(forecast: Forecast | None) -> str:
    bt = forecast.backtest if forecast else None
    if not bt:
        return ""
    h = 12 if bt.get("mae_pp_12m") is not None else 6
    if bt.get(f"mae_pp_{h}m") is None:
        return "back-test: too short"
    return f"{h}-mo back-test ±{bt[f'mae_pp_{h}m']:.1f} pp, {bt[f'coverage_{h}m']:.0%} in band"


def _display(key: str) -> str:
    return "ICT" if key == "ict" else key.replace("_", " ").capitalize()


def _panel(ax, report: Report, group: GroupReport, *, national: bool = False) -> None:
    width = 2.0 if national else 1.3
    _line(ax, report, group, group.forecast, lambda c: c.penetration, USE, width)
    _line(ax, report, group, group.agents, lambda c: c.agent_penetration or 0.0, AGENTS, width * 0.8)
    if group.observations:
        ax.scatter(
            [o["date"] for o in group.observations],
            [o["penetration"] for o in group.observations],
            color=USE,
            marker="D",
            s=14,
            zorder=3,
        )
    for when, level in report.targets:
        day = date.fromisoformat(when)
        start = report.months[0] if report.months else (group.forecast.band or [(day,)])[0][0]
        ax.plot([start, day], [level, level], color=TARGET, linewidth=0.8, linestyle=":")
        ax.scatter([day], [level], color=TARGET, marker="*", s=60 if national else 30, zorder=4)
    name = "All organizations (sum of the parts)" if national else _display(group.key)
    lines = [
        f"{name} · {group.latest.orgs:,} orgs",
        f"AI {group.latest.penetration:.0%} → {_outlook(group.forecast)}",
        f"agents {group.latest.agent_penetration or 0:.0%} → {_outlook(group.agents)}",
    ]
    trust = _trust(group.forecast)
    if trust:
        lines.append(trust)
    ax.set_title("\n".join(lines), fontsize=8.5 if national else 5.6, loc="left", pad=3, linespacing=1.2)
    ax.set_ylim(0, 1.0)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_yticks([0, 0.25, 0.5, 0.7, 0.9])
    ax.xaxis.set_major_locator(mdates.YearLocator(2 if national else 3))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y"))
    ax.tick_params(labelsize=8 if national else 6, length=2, pad=1)
    ax.grid(True, alpha=0.25, linewidth=0.5)


def chart_path(out: str | Path) -> Path:
    """The chart's file, whose name sets the format; ValueError unless it ends in ``.png`` or ``.svg``."""
    path = Path(out)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"chart file must end in {' or '.join(FORMATS)}, not {path.name!r}")
    return path


def write_chart(report: Report, out: str | Path) -> Path:
    """Write the chart; the format follows the file name (``.png`` or ``.svg``)."""
    path = chart_path(out)
    rows = math.ceil(len(report.groups) / COLUMNS)
    fig = plt.figure(figsize=(A4_WIDTH_IN, 3.6 + 2.1 * rows + 1.1), layout="constrained")
    try:
        grid = fig.add_gridspec(1 + rows, COLUMNS, height_ratios=[2.0] + [1.0] * rows)
        national = fig.add_subplot(grid[0, :])
        _panel(national, report, report.total, national=True)
        first = None
        for i, group in enumerate(report.groups):
            ax = fig.add_subplot(grid[1 + i // COLUMNS, i % COLUMNS], sharex=first, sharey=first)
            first = first or ax
            _panel(ax, report, group)
            if i % COLUMNS:
                ax.tick_params(labelleft=False)
        month = report.as_of.isoformat()[:7] if report.as_of else "no data"
        handles = [
            plt.Line2D([], [], color=USE, lw=1.6, label="uses AI (observed)"),
            plt.Line2D([], [], color=USE, lw=1.6, ls=(0, (3, 2)), label="forecast, 80% band shaded"),
            plt.Line2D([], [], color=AGENTS, lw=1.6, label="uses agents (observed, forecast dashed)"),
            plt.Line2D(
                [], [], color=TARGET, lw=0.8, ls=":", marker="*", label="targets: 70% by 2027, 90% by 2030"
            ),
        ]
        national.legend(handles=handles, loc="upper left", fontsize=7.5, frameon=False)
        fig.suptitle(
            f"AI adoption by {report.by}, observed to {month}: share of register organizations", fontsize=11
        )
        caption = textwrap.wrap(definition_caption(report), 150)
        fig.text(0.0, 0.0, "\n".join(caption), fontsize=5.2, va="bottom", ha="left")
        bottom = (
            len(caption) * 5.2 * 1.25 / 72 + 0.08
        ) / fig.get_figheight()  # the caption's height, in inches
        fig.get_layout_engine().set(rect=(0, bottom, 1, 1 - bottom))
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format=path.suffix[1:].lower(), dpi=150)
    finally:
        plt.close(fig)
    return path
