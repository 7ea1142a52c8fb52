"""The PNG: throughput against part count, one line per scenario, baselines as markers."""

from __future__ import annotations

from pathlib import Path

from .report import Row


def draw(rows: list[Row], path: Path, title: str) -> str | None:
    """Write the chart; return why not if matplotlib is missing (``pip install -e .[bench]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    scenarios = list(dict.fromkeys(r.scenario for r in rows))
    for name in scenarios:
        ours = sorted(
            (r for r in rows if r.scenario == name and r.tool == "blobdl" and r.throughput_mib_s),
            key=lambda r: r.parts,
        )
        if not ours:
            continue
        (line,) = ax.plot(
            [r.parts for r in ours], [r.throughput_mib_s or 0.0 for r in ours], "o-", label=name
        )
        ideal = [(r.parts, r.ideal_mib_s) for r in ours if r.ideal_mib_s]
        if ideal and name == "cdn":
            xs, ys = zip(*ideal, strict=True)
            ax.plot(xs, ys, ":", color=line.get_color(), label=f"{name} ideal")
        for base in (r for r in rows if r.scenario == name and r.tool != "blobdl"):
            if base.throughput_mib_s:
                ax.plot(
                    base.parts, base.throughput_mib_s, "x", ms=10, mew=2, color=line.get_color()
                )
                ax.annotate(f" {base.tool}", (base.parts, base.throughput_mib_s), fontsize=8)
    ax.set_xscale("log", base=2)
    ticks = sorted({r.parts for r in rows if r.throughput_mib_s})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("parts (blobdl --parts; x = a baseline tool at its own split)")
    ax.set_ylabel("throughput, MiB/s (median, wall time incl. start-up)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None
