"""Peak memory of a worker that takes a large multipart upload, with and without a key.

Not a test (pytest never collects ``tests/benchmarks``). Run it as::

    python tests/benchmarks/bench_upload_memory.py [--mib 200] [--rounds 2]

It migrates a SQLite database for the testproject, starts gunicorn with one sync
worker on 127.0.0.1 for each upload (so each starts from a fresh worker), and
sends ``--mib`` MiB of random bytes with ``curl -F`` to the DRF upload endpoint
(``/api/uploads/``, the ``IdempotencyMixin``), once without and once with an
``Idempotency-Key``, ``--rounds`` times. It reports the worker's peak RSS
(``VmHWM``) after each upload; the worker's RSS before it still moves while the
app loads, so the figure is the difference of the peaks. Target: the keyed
upload's peak is at most 32 MiB above the same upload's without a key.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import TESTPROJECT, AppServer, gunicorn, peak_rss_kib, testproject_env

MIB = 1024 * 1024
TOKEN = "bench-upload-token-0123456789abcdef"


def _peak_kib(pid: int) -> int:
    peak = peak_rss_kib(pid)
    if peak is None:
        raise RuntimeError(f"no VmHWM for process {pid}")
    return peak


def _env(directory: Path) -> dict[str, str]:
    return testproject_env(f"sqlite:///{directory / 'db.sqlite3'}", ALLOWED_HOSTS="127.0.0.1")


def _upload(directory: Path, env: dict[str, str], port: int, keyed: bool) -> dict[str, object]:
    server = AppServer(
        "gunicorn",
        gunicorn("testproject.wsgi:application", port, "--workers", "1", "--timeout", "300"),
        port=port,
        cwd=TESTPROJECT,
        env=env,
        quiet=True,
    )
    server.start()
    try:
        server.wait_until(lambda: bool(server.worker_pids()), timeout=30, interval=0.2)
        worker = server.worker_pids()[0]
        time.sleep(1.0)  # the worker finishes loading the app
        before = _peak_kib(worker)
        headers = ["-H", f"Authorization: Token {TOKEN}"]
        if keyed:
            headers += ["-H", f"Idempotency-Key: bench-{uuid.uuid4()}"]
        done = subprocess.run(
            [
                "curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST",
                f"http://127.0.0.1:{port}/api/uploads/", *headers,
                "-F", "note=bench", "-F", f"file=@{directory / 'upload.bin'}",
            ],
            capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        body, status = done.stdout.rsplit("\n", 1)
        after = _peak_kib(worker)
    finally:
        server.stop()
    return {
        "keyed": keyed,
        "status": int(status),
        "size": json.loads(body).get("size"),
        "peak_before_kib": before,
        "peak_after_kib": after,
        "raised_mib": round((after - before) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--port", type=int, default=8877)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-upload.") as name:
        directory = Path(name)
        with (directory / "upload.bin").open("wb") as out:
            for _ in range(args.mib):
                out.write(os.urandom(MIB))
        env = _env(directory)
        manage = [sys.executable, str(TESTPROJECT / "manage.py")]
        subprocess.run([*manage, "migrate", "-v", "0"], env=env, check=True)
        subprocess.run(
            [*manage, "setup_demo", "--token", TOKEN], env={**env, "DEBUG": "1"},
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        results = [
            _upload(directory, env, args.port, keyed)
            for _ in range(args.rounds)
            for keyed in (False, True)
        ]
    for row in results:
        print(json.dumps(row))
    plain = max(int(r["peak_after_kib"]) for r in results if not r["keyed"])  # type: ignore[call-overload]
    keyed = max(int(r["peak_after_kib"]) for r in results if r["keyed"])  # type: ignore[call-overload]
    print(
        f"{args.mib} MiB upload: worker peak RSS {plain / 1024:.1f} MiB without a key, "
        f"{keyed / 1024:.1f} MiB with one ({(keyed - plain) / 1024:+.1f} MiB)"
    )


if __name__ == "__main__":
    main()
