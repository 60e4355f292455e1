"""Charts of one run: latency over time, and the latency percentile curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def draw(result: dict[str, Any], stem: Path) -> list[Path]:
    title = f"{result['scenario']} ({result['config']['mode']} loop)"
    timeline = result["load"]["timeline"]
    fig, ax = plt.subplots(figsize=(8, 4))
    seconds = [row["second"] for row in timeline]
    ax.plot(seconds, [row["p50_ms"] for row in timeline], label="p50")
    ax.plot(seconds, [row["p99_ms"] for row in timeline], label="p99")
    ax.set(xlabel="second of the run", ylabel="latency (ms)", title=f"{title}: latency over time")
    ax2 = ax.twinx()
    ax2.bar(seconds, [row["requests"] for row in timeline], alpha=0.15, color="grey")
    ax2.set_ylabel("requests per second")
    ax.legend(loc="upper left")
    over_time = stem.with_name(stem.name + "-latency-over-time.png")
    fig.tight_layout()
    fig.savefig(over_time, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    lat = result["load"]["latency_ms"]
    names = ["p50", "p90", "p99", "p99.9", "max"]
    ax.bar(names, [lat[n] for n in names])
    for i, n in enumerate(names):
        ax.annotate(f"{lat[n]:.2f}", (i, lat[n]), ha="center", va="bottom")
    ax.set(ylabel="latency (ms)", title=f"{title}: latency percentiles")
    percentiles = stem.with_name(stem.name + "-latency-percentiles.png")
    fig.tight_layout()
    fig.savefig(percentiles, dpi=100)
    plt.close(fig)
    return [over_time, percentiles]
