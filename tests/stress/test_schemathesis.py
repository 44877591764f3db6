"""Scenario 8: schemathesis against the testproject's OpenAPI schema, over real HTTP.

The testproject runs under gunicorn on 127.0.0.1, on SQLite and on a private
PostgreSQL. Schemathesis (from PyPI) loads ``/api/schema/`` with the demo token
and runs every check it has (``--checks all``) through its four phases
(examples, coverage, fuzzing, stateful), with a fixed seed and a bounded number
of examples per operation. It must find nothing: no 5xx, no status, content
type, header or body that the schema does not document, no request the schema
forbids that the server takes, and none it allows that the server refuses.

The same run against the same server, with the app's problem responses taken
out of the schema, must fail: that is what shows the fuzzer would see an
undocumented ``application/problem+json`` answer.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.stress.harness import TOKEN, Database, Server, record

SEED = 1
MAX_EXAMPLES = 30  # per operation and phase; about 900 test cases in all
TIMEOUT = 600  # seconds for one schemathesis run; about 30 s when green
CONFIG = Path(__file__).resolve().parent / "schemathesis.toml"
WITHOUT_PROBLEMS = '["tests.stress.schema_hooks.drop_problem_responses"]'

CASES_RE = re.compile(r"(\d+) generated, (?:(\d+) passed|(\d+) found (\d+) unique failures?)")
TESTED_RE = re.compile(r"Tested: (\d+)")
FAILURE_RE = re.compile(r"❌ (ST\d+ [^:]+): (\d+)")


def _executable() -> Path:
    path = Path(sys.executable).parent / "schemathesis"
    if not path.exists():
        pytest.skip("schemathesis is not installed here (the stress tox envs install it)")
    return path


@dataclass
class Run:
    returncode: int
    output: str
    seconds: float

    @property
    def operations(self) -> int:
        match = TESTED_RE.search(self.output)
        return int(match.group(1)) if match else 0

    @property
    def cases(self) -> int:
        match = CASES_RE.search(self.output)
        return int(match.group(1)) if match else 0

    @property
    def failures(self) -> dict[str, int]:
        """Failures by kind, as the summary counts them: ``{"ST103 Undocumented status
        code": 6}``."""
        summary = self.output.rsplit("Failures:", 1)[-1] if "Failures:" in self.output else ""
        return {kind: int(count) for kind, count in FAILURE_RE.findall(summary)}


def schemathesis(port: int, work_dir: Path) -> Run:
    command = [
        str(_executable()),
        "--no-color",
        "--config-file",
        str(CONFIG),
        "run",
        f"http://127.0.0.1:{port}/api/schema/",
        "--checks",
        "all",
        "--seed",
        str(SEED),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--header",
        f"Authorization: Token {TOKEN}",
    ]
    started = time.monotonic()
    done = subprocess.run(
        command,
        cwd=work_dir,  # its own caches go there, not into the checkout
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    return Run(done.returncode, done.stdout + done.stderr, time.monotonic() - started)


def _database(kind: str, request: pytest.FixtureRequest) -> Database:
    if kind == "sqlite":
        database: Database = request.getfixturevalue("sqlite_db")
        return database
    store: Callable[[str], Database] = request.getfixturevalue("store")
    return store(kind)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_schemathesis_finds_nothing(
    kind: str, request: pytest.FixtureRequest, work_dir: Path
) -> None:
    database = _database(kind, request)
    with Server(database, work_dir, workers=2) as server:
        run = schemathesis(server.port, work_dir)
        log = server.log_tail()
    record(
        f"8. schemathesis, gunicorn/{database.label}",
        requests=run.cases,
        server_errors=run.failures.get("ST100 Server error", 0),
        seconds=run.seconds,
        notes=(
            f"--checks all, seed {SEED}, {MAX_EXAMPLES} examples: {run.operations} "
            f"operations, {run.cases} test cases, failures: {run.failures or 0}"
        ),
    )
    assert run.returncode == 0, f"{run.output}\nserver log:\n{log}"
    assert run.failures == {}
    # The schema has seven operations (orders: list, create, read, update, partial
    # update, delete; uploads: create), and every one was exercised.
    assert run.operations == 7, run.output
    assert run.cases >= 7 * MAX_EXAMPLES, run.output


def test_schemathesis_fails_a_schema_without_the_problem_responses(
    sqlite_db: Database, work_dir: Path
) -> None:
    env = {"STRESS_SCHEMA_HOOKS": WITHOUT_PROBLEMS}
    with Server(sqlite_db, work_dir, workers=2, env=env) as server:
        run = schemathesis(server.port, work_dir)
    record(
        "8. schemathesis, schema without problem responses",
        requests=run.cases,
        seconds=run.seconds,
        notes=f"must fail; failures: {run.failures}",
    )
    assert run.returncode == 1, run.output
    # Answers the app gives that such a schema does not have: a 409 or 400 where
    # only the view's own statuses are listed, problem+json where only JSON is.
    assert set(run.failures) <= {
        "ST103 Undocumented status code",
        "ST105 Undocumented Content-Type",
    }
    assert run.failures, run.output
    assert '"code": "idempotency_key_' in run.output, run.output
