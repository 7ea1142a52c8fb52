"""The PNG: throughput against connections (what matters), and against parts at the widest
connection count (with work stealing, barely anything); baselines as crosses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import Row


def draw(rows: list[Row], path: Path, title: str) -> str | None:
    """Write the chart; return why not if matplotlib is missing (``pip install -e .[bench]``)."""
    path.unlink(missing_ok=True)  # never leave an earlier run's chart beside these results
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    ours = [r for r in rows if r.tool == "blobdl" and r.throughput_mib_s]
    if not ours:
        return "no successful blobdl run"
    focus = max(r.connections for r in ours)
    if len({(r.parts, r.connections) for r in ours}) < 2:
        return "nothing swept (one configuration per scenario): the table says it all"
    fig, (by_conns, by_parts) = plt.subplots(1, 2, figsize=(13, 5.5), dpi=120, sharey=True)
    colours: dict[str, Any] = {}
    _panel(by_conns, rows, colours, "connections", lambda r: r.parts == r.connections)
    _panel(by_parts, rows, colours, "parts", lambda r: r.connections == focus)
    by_conns.set_xlabel("connections (blobdl --connections N --parts N)")
    by_parts.set_xlabel(f"parts (blobdl --parts, {focus} connections)")
    by_conns.set_ylabel("throughput, MiB/s (median, wall time incl. start-up)")
    for ax in (by_conns, by_parts):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None


def _panel(ax: Any, rows: list[Row], colours: dict[str, Any], axis: str, keep: Any) -> None:
    ticks: set[int] = set()
    for name in dict.fromkeys(r.scenario for r in rows):
        line_rows = sorted(
            (
                r
                for r in rows
                if r.scenario == name and r.tool == "blobdl" and r.throughput_mib_s and keep(r)
            ),
            key=lambda r: getattr(r, axis),
        )
        if len(line_rows) < 2:
            continue  # a single point says nothing about the axis
        xs = [getattr(r, axis) for r in line_rows]
        ticks.update(xs)
        (line,) = ax.plot(xs, [r.throughput_mib_s for r in line_rows], "o-", label=name)
        colours[name] = line.get_color()
        if axis == "connections":
            ideal = [
                (x, r.ideal_mib_s) for x, r in zip(xs, line_rows, strict=True) if r.ideal_mib_s
            ]
            if ideal:
                ix, iy = zip(*ideal, strict=True)
                ax.plot(ix, iy, ":", color=line.get_color(), label=f"{name} ideal")
        for base in (r for r in rows if r.scenario == name and r.tool != "blobdl"):
            x = base.connections if axis == "connections" else min(base.parts, max(xs) * 2)
            if base.throughput_mib_s:
                ax.plot(x, base.throughput_mib_s, "x", ms=9, mew=2, color=line.get_color())
                ax.annotate(f" {base.tool}", (x, base.throughput_mib_s), fontsize=7)
    if ticks:
        ax.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
