"""HTTP benchmark: django-idempotency against the alternatives, through gunicorn and wrk.

Run it with ``scripts/bench`` (``tox run -e bench``), or directly from an environment
that has requirements/bench.txt and this app installed::

    python tests/benchmarks/bench_http.py [--rounds 3] [--duration 8] [--quick]
                                          [--variants ours-first,drf-idempotency-first]

What it does, in one run:

1. starts a throwaway PostgreSQL 15 (``scripts/pg``), unless ``--url`` names a server,
   and gives every variant a database of its own there, migrated with that variant's
   settings module (tests/benchmarks/benchproject);
2. serves each variant with gunicorn (4 sync workers, ``--preload``) on 127.0.0.1;
3. checks that each variant does what it claims: a request with a key, then the same
   request again, must be a replay (same status and body, one row created);
4. puts load on one server at a time with Debian's ``wrk`` (``-t2 -c8``): R rounds, every
   (variant, endpoint) once per round in a shuffled order, each after a 1 s warm-up;
   the medians over the rounds are reported;
5. counts SQL statements per request (``X-Bench-Queries``, from the bench middleware),
   sends 20 keys x 8 concurrent identical requests to see whether the view ran twice,
   and reads each worker's peak RSS (``VmHWM``);
6. prints a markdown table and writes tests/benchmarks/results/http.json
   (tests/benchmarks/plot.py draws the chart from it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from common import (
    BENCH_DIR,
    RESULTS,
    ROOT,
    AppServer,
    create_database,
    drop_database,
    free_port,
    load_average,
    machine,
    peak_rss_kib,
    postgres_connect,
    postgres_server,
    utc_iso,
    version,
    write_json,
)
from report import STEP_HEADER, step_cells

from tests.stress.harness import Reply, gunicorn_command, send

WRK_DIR = BENCH_DIR / "wrk"
DEFAULT_OUTPUT = RESULTS / "http.json"

TOKEN = "bench-token-0123456789abcdef0123456789ab"
BODY = b'{"name":"widget","quantity":2,"price":"9.99"}'  # as in wrk/common.lua
WORKERS = 4
WRK_THREADS = 2
WRK_CONNECTIONS = 8
WARMUP_SECONDS = 1
QUERY_SAMPLES = 20
DUPLICATE_KEYS = 20
DUPLICATE_COPIES = 8


# ----------------------------------------------------------------- the variants


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    auth: bool
    #: Writes nothing: measured by the baseline only, for the cost of a step.
    probe: bool = False

    def headers(self, key: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        if self.auth:
            headers["Authorization"] = f"Token {TOKEN}"
        return headers


DRF = Endpoint("DRF", "/api/items/", auth=True)
PLAIN = Endpoint("plain", "/items/", auth=False)
#: A constant 201 through DRF's dispatch with token authentication, and from a plain
#: view: their difference is what being authenticated by DRF costs a request.
AUTH_PROBE = Endpoint("probe: DRF, token authentication", "/probe/drf/", auth=True, probe=True)
PLAIN_PROBE = Endpoint("probe: plain", "/probe/plain/", auth=False, probe=True)


@dataclass(frozen=True)
class Integration:
    name: str
    settings: str  # module under benchproject.settings
    package: str | None  # the distribution whose version is reported
    endpoints: tuple[Endpoint, ...]
    how: str
    #: The package's own sign of a replay, if it gives one.
    marker: Callable[[Reply], bool] | None = None


def _header(name: str, value: str | None = None) -> Callable[[Reply], bool]:
    def check(reply: Reply) -> bool:
        found = reply.headers.get(name.lower())
        return found is not None and (value is None or found == value)

    return check


INTEGRATIONS = {
    integration.name: integration
    for integration in (
        Integration(
            "baseline", "baseline", None, (DRF, PLAIN, AUTH_PROBE, PLAIN_PROBE), "no idempotency"
        ),
        Integration(
            "ours",
            "ours",
            "django-idempotency",
            (DRF, PLAIN),
            "IdempotencyMixin (DRF), IdempotencyMiddleware (plain)",
            _header("Idempotent-Replayed", "true"),
        ),
        Integration(
            "ours-atomic-false",
            "ours_atomic_false",
            "django-idempotency",
            (DRF, PLAIN),
            'as ours, IDEMPOTENCY = {"ATOMIC": False}',
            _header("Idempotent-Replayed", "true"),
        ),
        Integration(
            "ours-prepared",
            "ours_prepared",
            "django-idempotency",
            (DRF, PLAIN),
            'as ours, IDEMPOTENCY = {"PREPARED_STATEMENTS": True}',
            _header("Idempotent-Replayed", "true"),
        ),
        Integration(
            "django-idempotency-key",
            "django_idempotency_key",
            "django-idempotency-key",
            (DRF, PLAIN),
            "IdempotencyKeyMiddleware, CacheKeyStorage on Django's DatabaseCache",
        ),
        Integration(
            "drf-idempotency",
            "drf_idempotency",
            "drf-idempotency",
            (DRF, PLAIN),
            "IdempotencyMiddleware, DatabaseBackend",
            _header("Idempotent-Replayed", "true"),
        ),
        Integration(
            "drf-idempotencykey",
            "drf_idempotencykey",
            "drf-idempotencykey",
            (DRF,),
            "DrfIdempotencyKeyMixin (DRF views only)",
            _header("Cached-From-Idempotency-Key"),
        ),
        Integration(
            "djangorestframework-idempotency-key",
            "djangorestframework_idempotency_key",
            "djangorestframework-idempotency-key",
            (DRF,),
            "IdempotencyKeyMiddleware + @simple_idempotency_key_method (DRF views only)",
        ),
    )
}


@dataclass(frozen=True)
class Variant:
    name: str
    integration: Integration
    mode: str  # "none" (no key handling), "first" (a new key per request), "replay"

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self.integration.endpoints


def _variants() -> dict[str, Variant]:
    found = [
        Variant("baseline", INTEGRATIONS["baseline"], "none"),
        Variant("ours-first", INTEGRATIONS["ours"], "first"),
        Variant("ours-replay", INTEGRATIONS["ours"], "replay"),
        Variant("ours-atomic-false", INTEGRATIONS["ours-atomic-false"], "first"),
        Variant("ours-prepared-first", INTEGRATIONS["ours-prepared"], "first"),
        Variant("ours-prepared-replay", INTEGRATIONS["ours-prepared"], "replay"),
    ]
    for peer in (
        "django-idempotency-key",
        "drf-idempotency",
        "drf-idempotencykey",
        "djangorestframework-idempotency-key",
    ):
        found.append(Variant(f"{peer}-first", INTEGRATIONS[peer], "first"))
        found.append(Variant(f"{peer}-replay", INTEGRATIONS[peer], "replay"))
    return {variant.name: variant for variant in found}


VARIANTS = _variants()


@dataclass
class Run:
    """One (variant, endpoint) pair: a row of the table."""

    variant: Variant
    endpoint: Endpoint
    fixed_key: str | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    queries: list[int] = field(default_factory=list)
    query_statuses: Counter[str] = field(default_factory=Counter)

    @property
    def label(self) -> str:
        return f"{self.variant.name} / {self.endpoint.name}"


# -------------------------------------------------------------------- helpers


_STARTED = time.monotonic()


def say(message: str) -> None:
    elapsed = time.monotonic() - _STARTED
    print(f"==> [{int(elapsed // 60):02d}:{int(elapsed % 60):02d}] {message}", flush=True)


def django_env(settings_module: str, database_url: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "PYTEST_", "COV_", "BENCH_"))
    }
    # Only the bench project on the path: the app under test is the installed one.
    env.update(
        PYTHONPATH=str(BENCH_DIR),
        DJANGO_SETTINGS_MODULE=f"benchproject.settings.{settings_module}",
        BENCH_DATABASE_URL=database_url,
        PYTHONUNBUFFERED="1",
    )
    return env


def django_admin(settings_module: str, database_url: str, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=BENCH_DIR,
        env=django_env(settings_module, database_url),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(
            f"django-admin {' '.join(args)} failed for {settings_module}:\n"
            f"{done.stdout}\n{done.stderr}"
        )


class Server(AppServer):
    """The bench project under gunicorn, in its own process group."""

    def __init__(self, variant: Variant, database_url: str, log_dir: Path) -> None:
        port = free_port()
        super().__init__(
            f"gunicorn for {variant.name}",
            gunicorn_command("benchproject.wsgi:application", port, WORKERS),
            port=port,
            cwd=BENCH_DIR,
            env=django_env(variant.integration.settings, database_url),
            log=log_dir / f"gunicorn-{variant.name}.log",
        )
        self.variant = variant

    def wait_serving(self, timeout: float = 60) -> None:
        """Until ``/ping/`` answers and every worker is up."""

        def serving() -> bool:
            reply = send(self.port, "GET", "/ping/", timeout=2)
            return reply.status == 200 and len(self.worker_pids()) >= WORKERS

        self.wait_until(serving, timeout=timeout, interval=0.1)

    def peak_rss_mib(self) -> list[float]:
        """VmHWM of each worker, in MiB."""
        peaks = (peak_rss_kib(pid) for pid in self.worker_pids())
        return [peak / 1024 for peak in peaks if peak is not None]


class Databases:
    """A database per variant on the PostgreSQL server, cloned from one migrated
    template per settings module."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.templates: set[str] = set()
        self.created: list[str] = []

    def _create(self, name: str, template: str | None = None) -> str:
        url = create_database(self.server_url, name, template=template)
        self.created.append(name)
        return url

    def create(self, variant: Variant) -> str:
        settings_module = variant.integration.settings
        template = f"tpl_{settings_module}"
        if settings_module not in self.templates:
            url = self._create(template)
            django_admin(settings_module, url, "migrate", "--noinput", "-v", "0")
            if settings_module == "django_idempotency_key":
                django_admin(settings_module, url, "createcachetable", "-v", "0")
            django_admin(settings_module, url, "bench_setup", "--token", TOKEN)
            self.templates.add(settings_module)
        name = "v_" + re.sub(r"[^a-z0-9]+", "_", variant.name)
        return self._create(name, template=template)

    def drop(self) -> None:
        """Drop every database made here (clones first, then their templates)."""
        for name in reversed(self.created):
            drop_database(self.server_url, name)
        self.created.clear()

    def query(self, url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with postgres_connect(url) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[no-any-return]


def items(databases: Databases, url: str) -> int:
    return int(databases.query(url, "SELECT COUNT(*) FROM catalog_item")[0][0])


def new_key() -> str:
    return str(uuid.uuid4())


# -------------------------------------------------------------- the replay check


def check_replay(run: Run, server: Server, databases: Databases, url: str) -> str:
    """A request with a key, then the same again: a replay, or a clear abort.

    Returns the key (the replay variants keep hammering it). The baseline must do
    the opposite, which shows that the check can tell.
    """
    key = new_key()
    endpoint = run.endpoint
    before = items(databases, url)
    first = send(server.port, "POST", endpoint.path, BODY, endpoint.headers(key))
    second = send(server.port, "POST", endpoint.path, BODY, endpoint.headers(key))
    created = items(databases, url) - before
    problems = []
    if first.status != 201:
        problems.append(f"first request answered {first.describe()}")
    if endpoint.probe:
        if created != 0:
            problems.append(f"the probe created {created} rows, not 0")
    elif run.variant.mode == "none":
        if created != 2:
            problems.append(f"the baseline created {created} rows for two requests, not 2")
    else:
        if second.status is None or not 200 <= second.status < 300:
            problems.append(f"the repeated request answered {second.describe()}")
        elif second.body != first.body:
            problems.append(
                f"the repeated request got another body: {second.body[:200]!r} "
                f"after {first.body[:200]!r}"
            )
        if created != 1:
            problems.append(f"two requests with one key created {created} rows, not 1")
        marker = run.variant.integration.marker
        if marker is not None and not marker(second):
            problems.append(
                f"the repeated request lacks the package's replay header: {second.headers}"
            )
    if problems:
        raise SystemExit(
            f"{run.label}: the variant does not do what it claims:\n  "
            + "\n  ".join(problems)
            + f"\nserver log:\n{server.log_tail()}"
        )
    return key


# ------------------------------------------------------------------------ wrk

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _milliseconds(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if rps is None:
        raise ValueError(f"no Requests/sec in wrk's output:\n{output}")
    latency = {
        percent: _milliseconds(value, unit)
        for percent, value, unit in re.findall(
            r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE
        )
    }
    total = re.search(r"^\s+(\d+) requests in ", output, re.MULTILINE)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return {
        "rps": float(rps.group(1)),
        "p50_ms": latency.get("50"),
        "p99_ms": latency.get("99"),
        "requests": int(total.group(1)) if total else None,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(n) for n in socket.groups()) if socket else 0,
    }


def wrk(run: Run, server: Server, seconds: int) -> dict[str, Any]:
    endpoint = run.endpoint
    if run.variant.mode == "replay":
        script, extra = WRK_DIR / "fixed_key.lua", [run.fixed_key or ""]
    else:
        script, extra = WRK_DIR / "fresh_key.lua", []
    command = [
        "wrk",
        f"-t{WRK_THREADS}",
        f"-c{WRK_CONNECTIONS}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{server.port}{endpoint.path}",
        "--",
        TOKEN if endpoint.auth else "-",
        *extra,
    ]
    done = subprocess.run(
        command, cwd=WRK_DIR, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"wrk failed for {run.label}:\n{done.stdout}\n{done.stderr}")
    return parse_wrk(done.stdout)


# ----------------------------------------------------------- the other figures


def count_queries(run: Run, server: Server) -> None:
    """Statements per request from ``X-Bench-Queries``, over a few sequential requests."""
    for _ in range(QUERY_SAMPLES):
        key = run.fixed_key if run.variant.mode == "replay" else new_key()
        reply = send(server.port, "POST", run.endpoint.path, BODY, run.endpoint.headers(key))
        run.query_statuses[str(reply.status)] += 1
        value = reply.headers.get("x-bench-queries")
        if value is not None and reply.status is not None and 200 <= reply.status < 300:
            run.queries.append(int(value))


def concurrent_duplicates(
    server: Server, databases: Databases, url: str, endpoint: Endpoint
) -> dict[str, Any]:
    """20 keys, each sent as 8 identical requests released together: did the view run twice?"""
    prefix = f"dup-{uuid.uuid4().hex[:10]}-"
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    for index in range(DUPLICATE_KEYS):
        key = new_key()
        body = json.dumps({"name": f"{prefix}{index:03d}", "quantity": 1, "price": "1.00"})
        barrier = threading.Barrier(DUPLICATE_COPIES)

        def fire(body: bytes = body.encode(), key: str = key, barrier: Any = barrier) -> None:
            barrier.wait(timeout=30)
            reply = send(server.port, "POST", endpoint.path, body, endpoint.headers(key))
            with lock:
                statuses[str(reply.status)] += 1

        threads = [threading.Thread(target=fire, daemon=True) for _ in range(DUPLICATE_COPIES)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    rows = databases.query(
        url,
        "SELECT name, COUNT(*) FROM catalog_item WHERE name LIKE %s GROUP BY name",
        (prefix + "%",),
    )
    extra = sum(count - 1 for _, count in rows)
    lost = DUPLICATE_KEYS - len(rows)
    summary = "no" if extra == 0 else f"yes: {extra} extra rows / {DUPLICATE_KEYS} keys"
    if lost:
        summary += f" ({lost} keys created no row)"
    return {
        "summary": summary,
        "keys": DUPLICATE_KEYS,
        "copies": DUPLICATE_COPIES,
        "rows": sum(count for _, count in rows),
        "extra_rows": extra,
        "keys_without_row": lost,
        "statuses": dict(sorted(statuses.items())),
    }


# --------------------------------------------------------------- machine, versions


def versions(server_url: str) -> dict[str, Any]:
    with postgres_connect(server_url) as conn:
        postgres = conn.execute("SHOW server_version").fetchone()[0]
    probe = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    wrk_line = (probe.stdout + probe.stderr).strip().splitlines()
    found: dict[str, Any] = {
        "python": platform.python_version(),
        "django": version("Django"),
        "djangorestframework": version("djangorestframework"),
        "postgresql": postgres,
        "psycopg": version("psycopg"),
        "gunicorn": version("gunicorn"),
        "wrk": wrk_line[0].split(" Copyright")[0] if wrk_line else None,
    }
    for integration in INTEGRATIONS.values():
        if integration.package:
            found[integration.package] = version(integration.package)
    return found


# -------------------------------------------------------------------- reporting


def _median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summarise(
    run: Run, rss: dict[str, list[float]], duplicates: dict[tuple[str, str], dict[str, Any]]
) -> dict[str, Any]:
    peaks = rss.get(run.variant.name, [])
    integration = run.variant.integration
    return {
        "variant": run.variant.name,
        "endpoint": run.endpoint.name,
        "package": integration.package or "none",
        "integration": integration.how,
        "mode": run.variant.mode,
        "rps": _round(_median([r["rps"] for r in run.rounds]), 1),
        "p50_ms": _round(_median([r["p50_ms"] for r in run.rounds]), 2),
        "p99_ms": _round(_median([r["p99_ms"] for r in run.rounds]), 2),
        "non_2xx": sum(r["non_2xx"] for r in run.rounds),
        "socket_errors": sum(r["socket_errors"] for r in run.rounds),
        "requests": sum(r["requests"] or 0 for r in run.rounds),
        "queries_per_request": _median([float(q) for q in run.queries]),
        "query_samples": len(run.queries),
        "query_statuses": dict(run.query_statuses),
        "rss_peak_mib": {
            "max": _round(max(peaks), 1) if peaks else None,
            "mean": _round(statistics.mean(peaks), 1) if peaks else None,
            "workers": len(peaks),
        },
        "duplicates": duplicates.get((integration.name, run.endpoint.name)),
        "rounds": run.rounds,
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if digits else f"{value:,.0f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    baseline = {row["endpoint"]: row["rps"] for row in rows if row["variant"] == "baseline"}
    header = [
        "variant",
        "endpoint",
        "req/s",
        "vs baseline",
        "p50 ms",
        "p99 ms",
        "non-2xx",
        "queries/req",
        "peak RSS MiB (max/mean)",
        "ran the view twice under concurrent duplicates",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        base = baseline.get(row["endpoint"])
        ratio = f"{row['rps'] / base:.2f}x" if base and row["rps"] else "-"
        rss = row["rss_peak_mib"]
        cells = [
            row["variant"],
            row["endpoint"],
            _fmt(row["rps"], 0),
            ratio,
            _fmt(row["p50_ms"], 2),
            _fmt(row["p99_ms"], 2),
            str(row["non_2xx"]),
            _fmt(row["queries_per_request"], 0),
            f"{_fmt(rss['max'])} / {_fmt(rss['mean'])}",
            (row["duplicates"] or {}).get("summary", "-"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_DRF_AUTH = "DRF's dispatch and token authentication"

#: What an alternative skips, per (package, endpoint, mode), and so may be faster by:
#: the step's name and the two baseline endpoints whose difference measures it.
SKIPPED_STEPS: dict[tuple[str, str, str], tuple[str, str, str]] = {
    # Both answer a replay from their middleware, before DRF authenticates the caller.
    ("drf-idempotency", "DRF", "replay"): (_DRF_AUTH, AUTH_PROBE.name, PLAIN_PROBE.name),
    ("django-idempotency-key", "DRF", "replay"): (_DRF_AUTH, AUTH_PROBE.name, PLAIN_PROBE.name),
}


def _ms(rps: float | None) -> float | None:
    """Machine time per request, in ms: the inverse of the throughput."""
    return 1000.0 / rps if rps else None


def skipped_steps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every (alternative, endpoint, mode) faster than one of ours: by how much, and
    what the step it skips costs, both in machine time per request."""
    baseline = {row["endpoint"]: row["rps"] for row in rows if row["mode"] == "none"}
    ours = {
        (row["variant"].rsplit("-", 1)[0], row["endpoint"], row["mode"]): row["rps"]
        for row in rows
        if row["variant"] in {"ours-first", "ours-replay"}
        or row["variant"].startswith("ours-prepared-")
    }
    found = []
    for row in rows:
        if row["package"] in {"none", "django-idempotency"}:
            continue
        for (integration, endpoint, mode), our_rps in sorted(ours.items()):
            if endpoint != row["endpoint"] or mode != row["mode"] or not our_rps:
                continue
            if row["rps"] is None or row["rps"] <= our_rps:
                continue
            gap = (_ms(our_rps) or 0) - (_ms(row["rps"]) or 0)
            step = SKIPPED_STEPS.get((row["package"], endpoint, mode))
            cost = None
            if step is not None:
                with_step, without = baseline.get(step[1]), baseline.get(step[2])
                if with_step and without:
                    cost = (_ms(with_step) or 0) - (_ms(without) or 0)
            found.append(
                {
                    "alternative": row["variant"],
                    "ours": f"{integration}-{mode}",
                    "endpoint": endpoint,
                    "gap_ms": round(gap, 3),
                    "skipped_step": step[0] if step else None,
                    "step_ms": None if cost is None else round(cost, 3),
                    "within": None if cost is None else gap <= cost,
                }
            )
    return found


def steps_table(steps: list[dict[str, Any]]) -> str:
    if not steps:
        return "No alternative was faster than ours on any endpoint."
    lines = ["| " + " | ".join(STEP_HEADER) + " |", "|" + "---|" * len(STEP_HEADER)]
    lines += ["| " + " | ".join(step_cells(step)) + " |" for step in steps]
    return "\n".join(lines)


# ------------------------------------------------------------------------- main


def measure(
    args: argparse.Namespace,
    variants: list[Variant],
    runs: list[Run],
    server_url: str,
    log_dir: Path,
) -> tuple[dict[str, list[float]], dict[tuple[str, str], dict[str, Any]], dict[str, Any]]:
    """Everything measured on the server of ``server_url``: fills in ``runs``; returns
    the workers' peak RSS, the concurrent duplicates and the versions."""
    servers: dict[str, Server] = {}
    databases = Databases(server_url)
    try:
        urls: dict[str, str] = {}
        say("creating and migrating a database per variant")
        for variant in variants:
            urls[variant.name] = databases.create(variant)
        say(f"starting {len(variants)} gunicorn servers (logs in {log_dir})")
        for variant in variants:
            servers[variant.name] = Server(variant, urls[variant.name], log_dir)
            servers[variant.name].start()
        for server in servers.values():
            server.wait_serving()

        say("checking that each variant replays (the baseline must not)")
        for run in runs:
            name = run.variant.name
            key = check_replay(run, servers[name], databases, urls[name])
            if run.variant.mode == "replay":
                run.fixed_key = key

        order = random.Random(args.seed)
        for number in range(1, args.rounds + 1):
            shuffled = runs[:]
            order.shuffle(shuffled)
            say(f"round {number}/{args.rounds}")
            for run in shuffled:
                server = servers[run.variant.name]
                wrk(run, server, WARMUP_SECONDS)
                figures = wrk(run, server, args.duration)
                figures["round"] = number
                run.rounds.append(figures)
                print(
                    f"    {run.label:<52} {figures['rps']:>8.1f} req/s  "
                    f"p50 {figures['p50_ms']:.2f} ms  p99 {figures['p99_ms']:.2f} ms  "
                    f"non-2xx {figures['non_2xx']}",
                    flush=True,
                )

        say(f"counting SQL statements ({QUERY_SAMPLES} requests per run)")
        for run in runs:
            count_queries(run, servers[run.variant.name])

        say(
            f"concurrent duplicates: {DUPLICATE_KEYS} keys x {DUPLICATE_COPIES} identical "
            "requests at once"
        )
        duplicates: dict[tuple[str, str], dict[str, Any]] = {}
        for run in runs:
            integration = run.variant.integration
            slot = (integration.name, run.endpoint.name)
            if slot in duplicates or run.variant.mode == "replay" or run.endpoint.probe:
                continue
            name = run.variant.name
            duplicates[slot] = concurrent_duplicates(
                servers[name], databases, urls[name], run.endpoint
            )
            print(f"    {integration.name} / {run.endpoint.name}: {duplicates[slot]['summary']}")
        for run in runs:  # a replay variant whose first-request sibling was left out
            slot = (run.variant.integration.name, run.endpoint.name)
            if slot not in duplicates and not run.endpoint.probe:
                name = run.variant.name
                duplicates[slot] = concurrent_duplicates(
                    servers[name], databases, urls[name], run.endpoint
                )

        rss = {name: server.peak_rss_mib() for name, server in servers.items()}
        found_versions = versions(server_url)
    finally:
        for server in servers.values():
            server.stop()
        if args.url:  # a throwaway server goes with its databases
            try:
                databases.drop()
            except Exception as exc:
                print(f"could not drop the benchmark's databases: {exc}", file=sys.stderr)
    return rss, duplicates, found_versions


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3)")
    parser.add_argument(
        "--duration", type=int, default=None, help="seconds of load per run (default 8)"
    )
    parser.add_argument(
        "--variants",
        default="",
        help="comma-separated subset of: " + ", ".join(VARIANTS) + " (the baseline is always in)",
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s: for development")
    parser.add_argument("--seed", type=int, default=None, help="seed of the run order")
    parser.add_argument(
        "--url",
        default=None,
        help="PostgreSQL server URL (a database per variant is created there, and dropped "
        "after); default: a throwaway PostgreSQL 15 started with scripts/pg",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (3 if args.quick else 8)
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    chosen = {"baseline", *names} if names else set(VARIANTS)
    args.chosen = [variant for name, variant in VARIANTS.items() if name in chosen]
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**31)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk (scripts/bench does it as root)")
    started = time.monotonic()
    load_at_start = round(load_average(), 2)
    variants: list[Variant] = args.chosen
    runs = [Run(variant, endpoint) for variant in variants for endpoint in variant.endpoints]
    load_seconds = args.rounds * len(runs) * (args.duration + WARMUP_SECONDS + 0.3)
    settings_modules = {variant.integration.settings for variant in variants}
    setup_seconds = 15 + 6 * len(settings_modules) + 2 * len(variants)
    check_seconds = 3 * len(runs)
    estimate = load_seconds + setup_seconds + check_seconds
    say(
        f"{len(variants)} variants, {len(runs)} runs x {args.rounds} rounds x "
        f"({args.duration} s + {WARMUP_SECONDS} s warm-up); wrk -t{WRK_THREADS} "
        f"-c{WRK_CONNECTIONS}; gunicorn {WORKERS} sync workers; seed {args.seed}"
    )
    say(f"expected total time: about {estimate / 60:.1f} min")

    log_dir = Path(tempfile.mkdtemp(prefix="django-idempotency-bench-logs.", dir="/tmp"))
    where = urlsplit(args.url) if args.url else None
    say(
        f"using PostgreSQL on {where.hostname}:{where.port}"
        if where
        else "starting PostgreSQL 15 (scripts/pg)"
    )
    measured = None
    try:
        with postgres_server(args.url) as server_url:
            measured = measure(args, variants, runs, server_url, log_dir)
    except Exception as exc:
        if measured is None:
            raise
        print(f"could not stop PostgreSQL: {exc}", file=sys.stderr)
    rss, duplicates, found_versions = measured
    rows = [summarise(run, rss, duplicates) for run in runs]
    elapsed = time.monotonic() - started
    result = {
        "benchmark": "http",
        "date": utc_iso(),
        "machine": {**machine(), "load_average": [load_at_start, round(load_average(), 2)]},
        "versions": found_versions,
        "parameters": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": WARMUP_SECONDS,
            "wrk": f"-t{WRK_THREADS} -c{WRK_CONNECTIONS} --latency",
            "server": f"gunicorn --workers {WORKERS} --worker-class sync --preload",
            "database": f"PostgreSQL on {where.hostname if where else '127.0.0.1'}, one "
            "database per variant, CONN_MAX_AGE=600",
            "seed": args.seed,
            "statistic": "median over rounds (non_2xx, socket_errors and requests: sums)",
            "queries": (
                f"median of {QUERY_SAMPLES} sequential requests; statements sent through a "
                "cursor, SAVEPOINTs included, BEGIN/COMMIT not"
            ),
            "duplicates": f"{DUPLICATE_KEYS} keys x {DUPLICATE_COPIES} identical concurrent requests",
            "rss": "VmHWM of each gunicorn worker at the end of the run",
        },
        "elapsed_s": round(elapsed, 1),
        "variants": rows,
        "skipped_steps": skipped_steps(rows),
    }
    write_json(args.output, result)
    shutil.rmtree(log_dir, ignore_errors=True)
    print()
    print(table(rows))
    print()
    print(steps_table(result["skipped_steps"]))
    print()
    say(
        f"wrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}"
    )
    say(f"total time {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
