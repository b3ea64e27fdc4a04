"""Penetration curves per group with their forecast and 80% band, the targets drawn, as PNG or SVG."""

from __future__ import annotations

import textwrap
from datetime import date
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, safe in servers and tests

import matplotlib.dates as mdates
import matplotlib.pyplot as plt

from aiplus.adoption.report import GroupReport, Report, definition_caption

FORMATS = (".png", ".svg")


def _draw_group(ax, report: Report, group: GroupReport, color, *, total: bool = False) -> None:
    width = 2.6 if total else 1.4
    label = "all organizations" if total else group.key.replace("_", " ")
    ax.plot(report.months, [c.penetration for c in group.series], color=color, linewidth=width, label=label)
    band = [b for b in group.forecast.band if b[0] >= report.months[-1]] if report.months else []
    if band:
        months = [b[0] for b in band]
        ax.plot(months, [b[1] for b in band], color=color, linewidth=width * 0.8, linestyle="--")
        ax.fill_between(
            months, [b[2] for b in band], [b[3] for b in band], color=color, alpha=0.12, linewidth=0
        )
    if group.observations:
        ax.scatter(
            [o["date"] for o in group.observations],
            [o["penetration"] for o in group.observations],
            color=color,
            marker="D",
            s=22,
            zorder=3,
        )


def chart_path(out: str | Path) -> Path:
    """The chart's file, whose name sets the format; ValueError unless it ends in ``.png`` or ``.svg``."""
    path = Path(out)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"chart file must end in {' or '.join(FORMATS)}, not {path.name!r}")
    return path


def write_chart(report: Report, out: str | Path) -> Path:
    """Write the chart; the format follows the file name (``.png`` or ``.svg``)."""
    path = chart_path(out)
    fig, ax = plt.subplots(figsize=(13, 7.5), layout="constrained")
    try:
        colors = plt.get_cmap("tab20").colors
        for i, group in enumerate(report.groups):
            _draw_group(ax, report, group, colors[i % len(colors)])
        _draw_group(ax, report, report.total, "black", total=True)
        for when, level in report.targets:
            day = date.fromisoformat(when)
            ax.axhline(level, color="firebrick", linewidth=0.8, linestyle=":")
            ax.axvline(day, color="firebrick", linewidth=0.8, linestyle=":")
            ax.scatter([day], [level], color="firebrick", marker="*", s=160, zorder=4)
            ax.annotate(
                f"target {level:.0%} by {when}",
                (day, level),
                textcoords="offset points",
                xytext=(-8, 8),
                ha="right",
                color="firebrick",
                fontsize=9,
            )
        month = report.as_of.isoformat()[:7] if report.as_of else "no data"
        ax.set_title(f"AI adoption by {report.by}: observed to {month}, forecast (dashed) with 80% band")
        ax.set_ylabel("penetration (share of register organizations)")
        ax.set_ylim(0, 1.02)
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.xaxis.set_major_locator(mdates.YearLocator())
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y"))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        fig.text(
            0.01, 0.0, "\n".join(textwrap.wrap(definition_caption(report), 190)), fontsize=7, va="bottom"
        )
        fig.get_layout_engine().set(rect=(0, 0.08, 1, 0.92))
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format=path.suffix[1:].lower(), dpi=110)
    finally:
        plt.close(fig)
    return path
