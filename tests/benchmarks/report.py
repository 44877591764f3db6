"""Write the benchmark tables of the docs from the results of ``tox -e bench``.

Reads ``results/http.json``, ``results/inprocess.json`` and ``results/memory.json``
and writes ``docs/_static/benchmarks-{http,inprocess,memory}.rst``, which
``docs/benchmarks.rst`` includes. Only measured figures go in; the notes beside the alternatives state
what each one skips, as measured by the benchmark's own checks.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from common import DOCS_STATIC, RESULTS, ROOT

#: What an alternative skips that makes it cheaper, as the benchmark observed it.
SKIPS = {
    "django-idempotency-key": "keeps no lock across processes: ran the view again under "
    "concurrent duplicates; replays before authentication, keyed by the Authorization header",
    "drf-idempotency": "replays before authentication, to any caller who has the key",
}


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        out.append(f"   * - {row[0]}")
        out.extend(f"     - {cell}" if cell else "     -" for cell in row[1:])
    return [*out, ""]


#: The columns of the table of skipped steps (``bench_http.skipped_steps``).
STEP_HEADER = [
    "alternative",
    "faster than",
    "endpoint",
    "gap, ms/request",
    "the step it skips",
    "the step, ms/request",
    "gap within the step",
]


def step_cells(step: dict[str, Any]) -> list[str]:
    """One row of the table of skipped steps."""
    return [
        step["alternative"],
        step["ours"],
        step["endpoint"],
        f"{step['gap_ms']:.3f}",
        step["skipped_step"] or "not measured",
        "-" if step["step_ms"] is None else f"{step['step_ms']:.3f}",
        "-" if step["within"] is None else ("yes" if step["within"] else "no"),
    ]


def http_section(data: dict[str, Any]) -> list[str]:
    versions = data["versions"]
    machine = data["machine"]
    params = data["parameters"]
    lines = [
        f"Measured {data['date'][:16].replace('T', ' ')} UTC on {machine['cpu']}, "
        f"{machine['cores']} cores; Python {versions['python']}, Django {versions['django']}, "
        f"DRF {versions['djangorestframework']}, PostgreSQL {versions['postgresql'].split()[0]}, "
        f"gunicorn {versions['gunicorn']} ({params['server'].split('gunicorn ')[-1]}), "
        f"wrk {params['wrk']}; the median of {params['rounds']} interleaved rounds of "
        f"{params['duration_s']} s per variant.",
        "",
    ]
    header = [
        "variant",
        "endpoint",
        "req/s",
        "vs baseline",
        "p50 ms",
        "p99 ms",
        "queries/request",
        "peak RSS/worker MiB",
        "view ran twice under concurrent duplicates",
        "skips",
    ]
    base = {v["endpoint"]: v["rps"] for v in data["variants"] if v["mode"] == "none"}
    rows = []
    for v in data["variants"]:
        rows.append(
            [
                v["variant"],
                v["endpoint"],
                f"{v['rps']:,.0f}",
                f"{v['rps'] / base[v['endpoint']]:.2f}x",
                f"{v['p50_ms']:.1f}",
                f"{v['p99_ms']:.1f}",
                f"{v['queries_per_request']:g}",
                f"{v['rss_peak_mib']['max']:.1f}",
                (v["duplicates"] or {}).get("summary", "-"),
                SKIPS.get(v["package"], ""),
            ]
        )
    lines += _table(header, rows)
    if "skipped_steps" not in data:
        return lines  # measured before the benchmark compared skipped steps
    steps = data["skipped_steps"]
    if not steps:
        return [*lines, "No alternative was faster than ours on any endpoint.", ""]
    lines += [
        "Where an alternative is faster than ours, by how much, and what the step it "
        "skips costs, both as machine time per request (1000 / req/s). The step is measured "
        "on the baseline: a constant 201 through DRF's dispatch with token authentication, "
        "against the same 201 from a plain view.",
        "",
    ]
    return lines + _table(STEP_HEADER, [step_cells(s) for s in steps])


def inprocess_section(data: dict[str, Any]) -> list[str]:
    header = [
        "database",
        "baseline µs",
        "no key",
        "replay",
        "first request",
        "floor",
        "no key vs baseline (target ≥ 0.98)",
        "replay vs baseline (target ≥ 1.00)",
        "first beyond floor, x baseline (target ≤ 0.15)",
    ]
    rows = []
    first = next(iter(data.values()))
    for result in data.values():
        us = result["per_request_us"]
        ratio = result["throughput_vs_baseline"]
        rows.append(
            [
                result["database"],
                f"{us['baseline']:,.0f}",
                f"{us['no-key']:,.0f}",
                f"{us['replay']:,.0f}",
                f"{us['first']:,.0f}",
                f"{us['floor']:,.0f}",
                f"{ratio['no-key']:.2f}",
                f"{ratio['replay']:.2f}",
                f"{result['first_cost_beyond_floor_vs_baseline']:.2f}",
            ]
        )
    intro = [
        f"Measured {first['date']} on {first['machine']}, Python {first['python']}, "
        f"Django {first['django']}, "
        f"{first['rounds']} shuffled rounds of {first['requests_per_round']} requests per "
        "variant; times are medians per request.",
        "",
    ]
    return intro + _table(header, rows)


def memory_section(data: dict[str, Any]) -> list[str]:
    header = ["database", "body", "storing raised peak RSS by", "replaying raised it by"]
    rows = [
        [
            name,
            f"{r['body_mib']} MiB",
            f"{r['store_raised_peak_mib']:.1f} MiB, {r['store_raised_peak_by_x_body']:.2f}x the body",
            f"{r['replay_raised_peak_mib']:.1f} MiB, {r['replay_raised_peak_by_x_body']:.2f}x the body",
        ]
        for name, r in data.items()
    ]
    rounds = {r["rounds"] for r in data.values()}
    first = next(iter(data.values()))
    measured = (
        f"Measured {first['date']} on {first['machine']}, Python {first['python']}, "
        f"Django {first['django']}; "
        if "date" in first
        else ""
    )
    intro = [
        f"{measured}{'the' if measured else 'The'} median of {', '.join(map(str, sorted(rounds)))} rounds, each in "
        "fresh processes.",
        "",
    ]
    return intro + _table(header, rows)


README = ROOT / "README.md"
README_START = "<!-- benchmark summary: written by tests/benchmarks/report.py -->"
README_END = "<!-- end of benchmark summary -->"

#: The README's rows: (variant prefix, label). The baseline row has no replays.
README_ROWS = [
    ("baseline", "no idempotency"),
    ("ours", "**django-idempotency**"),
    ("ours-prepared", 'django-idempotency, `"PREPARED_STATEMENTS": True`'),
    ("django-idempotency-key", "django-idempotency-key"),
    ("drf-idempotency", "drf-idempotency"),
    ("drf-idempotencykey", "drf-idempotencykey"),
    ("djangorestframework-idempotency-key", "djangorestframework-idempotency-key"),
]

#: An empty cell of the README's table (an en dash).
NONE = "\u2013"

#: The README's note beside an alternative's figure.
README_NOTES = {
    "django-idempotency-key": "ran the view twice under concurrent duplicates",
    "drf-idempotency": "replays before authentication, to anyone with the key",
}


def readme_summary(data: dict[str, Any]) -> list[str]:
    """The README's table: requests/s of each package, first requests and replays."""
    versions, machine = data["versions"], data["machine"]
    rps = {(v["variant"], v["endpoint"]): v["rps"] for v in data["variants"]}
    steps = {
        (s["alternative"], s["endpoint"]): s
        for s in data.get("skipped_steps", [])
        if s["ours"].startswith("ours-") and not s["ours"].startswith("ours-prepared")
    }
    lines = [
        f"Through gunicorn (4 sync workers) on PostgreSQL "
        f"{versions['postgresql'].split()[0]}, one INSERT per request, measured with `wrk` on "
        f"{machine['cores']} cores on {data['date'][:10]} (Python {versions['python']}, "
        f"Django {versions['django']}, DRF {versions['djangorestframework']}; "
        "[docs/benchmarks.rst](docs/benchmarks.rst) has every figure, p50/p99, queries, "
        "memory, and the cost of each step an alternative skips):",
        "",
        "| requests/s | DRF view, first requests | DRF view, replays "
        "| plain view, first requests | plain view, replays |",
        "|---|---|---|---|---|",
    ]
    for prefix, label in README_ROWS:
        package = next(
            (v["package"] for v in data["variants"] if v["variant"].startswith(prefix)), None
        )
        version = (
            versions.get(package or "")
            if prefix not in {"baseline", "ours", "ours-prepared"}
            else None
        )
        if package is None:
            continue  # not in this run
        note = README_NOTES.get(package or "")
        name_cell = f"{label} {version}" if version else label
        cells = [f"{name_cell} ({note})" if note else name_cell]
        for endpoint in ("DRF", "plain"):
            for mode in ("first", "replay"):
                name = prefix if prefix == "baseline" else f"{prefix}-{mode}"
                value = rps.get((name, endpoint))
                if value is None or (prefix == "baseline" and mode == "replay"):
                    cells.append(NONE)
                    continue
                cell = f"{value:,.0f}"
                step = steps.get((name, endpoint))
                if step is not None and step["step_ms"] is not None:
                    cell += (
                        f" (skips {step['skipped_step']}, {step['step_ms']:.2f} ms/request; "
                        f"ours takes {step['gap_ms']:.2f} ms/request more)"
                    )
                cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_readme(data: dict[str, Any]) -> None:
    text = README.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"report.py: README.md lacks the {README_START!r} markers")
    body = "\n".join(readme_summary(data))
    README.write_text(text[: start + len(README_START)] + "\n" + body + "\n" + text[end:])
    print(f"wrote {README}")


def main() -> int:
    sections = [
        ("http", "http.json", http_section),
        ("inprocess", "inprocess.json", inprocess_section),
        ("memory", "memory.json", memory_section),
    ]
    for name, filename, build in sections:
        path = RESULTS / filename
        if not path.exists():
            print(f"report.py: {path} is missing; run tox -e bench", file=sys.stderr)
            return 1
        out = DOCS_STATIC / f"benchmarks-{name}.rst"
        lines = [
            ".. Written by tests/benchmarks/report.py from tests/benchmarks/results/; do not edit.",
            "",
            *build(json.loads(path.read_text())),
        ]
        out.write_text("\n".join(lines))
        print(f"wrote {out}")
    write_readme(json.loads((RESULTS / "http.json").read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
