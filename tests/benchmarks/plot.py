"""Draw tests/benchmarks/results/http.json (from bench_http.py) as a PNG chart.

    python tests/benchmarks/plot.py [--input results/http.json] [--output docs/_static/...]

Horizontal bars of requests/s per variant, one panel per endpoint (DRF create,
plain Django view), coloured by what the requests were (no key handling, first
requests, replays), each annotated with its p99 latency; the footer gives the
machine, the versions and the date of the run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib
from common import DOCS_STATIC, RESULTS

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.patches import Patch

DEFAULT_INPUT = RESULTS / "http.json"
DEFAULT_OUTPUT = DOCS_STATIC / "benchmarks-http.png"

COLOURS = {"none": "#9e9e9e", "first": "#4c72b0", "replay": "#55a868"}
LABELS = {"none": "no idempotency", "first": "first requests", "replay": "replays"}
OURS = "django-idempotency"


def footer(result: dict[str, Any]) -> str:
    machine = result["machine"]
    versions = result["versions"]
    params = result["parameters"]
    peers = ", ".join(
        f"{name} {version}"
        for name, version in versions.items()
        if name
        not in (
            "python",
            "django",
            "djangorestframework",
            "postgresql",
            "psycopg",
            "gunicorn",
            "wrk",
            OURS,
        )
        and version
    )
    return "\n".join(
        [
            f"{result['date']} · {machine['cpu']} · {machine['cores']} cores · "
            f"{machine['platform']}",
            f"Python {versions['python']} · Django {versions['django']} · "
            f"DRF {versions['djangorestframework']} · PostgreSQL {versions['postgresql']} · "
            f"gunicorn {versions['gunicorn']} ({params['server'].split('gunicorn ')[-1]}) · "
            f"{versions['wrk']} ({params['wrk']})",
            f"{OURS} {versions.get(OURS)} · {peers}",
            f"median of {params['rounds']} interleaved rounds of {params['duration_s']} s "
            "per variant; bar label: requests/s, p99 latency; "
            '"view ran twice": 8 concurrent identical requests created more than one row',
        ]
    )


def draw(result: dict[str, Any], output: Path) -> None:
    rows = result["variants"]
    endpoints = [e for e in ("DRF", "plain") if any(r["endpoint"] == e for r in rows)]
    heights = [sum(r["endpoint"] == e for r in rows) for e in endpoints]
    fig, axes = plt.subplots(
        len(endpoints),
        1,
        figsize=(11, 1.2 + 0.42 * sum(heights) + 1.6),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    top = max((r["rps"] or 0) for r in rows)
    for ax, endpoint in zip(axes[:, 0], endpoints, strict=True):
        chosen = [r for r in rows if r["endpoint"] == endpoint]
        names = [r["variant"] for r in chosen]
        values = [r["rps"] or 0 for r in chosen]
        colours = [COLOURS[r["mode"]] for r in chosen]
        positions = list(range(len(chosen)))[::-1]
        bars = ax.barh(positions, values, color=colours, height=0.7)
        for bar, row in zip(bars, chosen, strict=True):
            if row["package"] == OURS:
                bar.set_edgecolor("black")
                bar.set_linewidth(1.5)
            p99 = row["p99_ms"]
            text = f"{row['rps']:,.0f} req/s · p99 {p99:.1f} ms" if p99 is not None else ""
            if row["mode"] != "none" and (row.get("duplicates") or {}).get("extra_rows"):
                text += " · view ran twice"
            ax.text(
                bar.get_width() + top * 0.01,
                bar.get_y() + bar.get_height() / 2,
                text,
                va="center",
                fontsize=8,
            )
        ax.set_yticks(positions, names, fontsize=9)
        for label, row in zip(ax.get_yticklabels(), chosen, strict=True):
            if row["package"] == OURS:
                label.set_fontweight("bold")
        ax.set_xlim(0, top * 1.45)
        title = (
            "DRF create view (token auth)" if endpoint == "DRF" else "plain Django view (anonymous)"
        )
        ax.set_title(title, loc="left", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    axes[-1, 0].set_xlabel("requests/s (higher is better)")
    modes = [m for m in ("none", "first", "replay") if any(r["mode"] == m for r in rows)]
    fig.legend(
        handles=[Patch(color=COLOURS[m], label=LABELS[m]) for m in modes],
        loc="upper right",
        ncol=len(modes),
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(
        "Idempotency-Key packages through gunicorn: one INSERT per request",
        x=0.01,
        ha="left",
        fontsize=12,
    )
    fig.text(0.01, 0.005, footer(result), fontsize=7, color="#444444", va="bottom")
    fig.tight_layout(rect=(0, 0.09, 1, 0.97))
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    result = json.loads(args.input.read_text())
    draw(result, args.output)
    print(f"==> wrote {args.output}")


if __name__ == "__main__":
    main()
