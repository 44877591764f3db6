"""Check that the built distributions ship what the app needs at run time.

Usage: python scripts/check_dist.py DIST_DIR

A wheel without its migrations, templates, management commands or py.typed
installs fine and then fails in the user's project, so the tox `packaging` env
looks inside it.
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

PACKAGE = "idempotency"
REQUIRED_IN_WHEEL = [
    f"{PACKAGE}/__init__.py",
    f"{PACKAGE}/py.typed",
    f"{PACKAGE}/migrations/__init__.py",
    f"{PACKAGE}/migrations/0001_initial.py",
]
REQUIRED_IN_SDIST = ["pyproject.toml", "LICENSE", f"{PACKAGE}/py.typed"]
FORBIDDEN_TOP_LEVEL = {"tests", "testproject", "docs", "scripts"}


def check_wheel(path: Path, source_root: Path) -> list[str]:
    with zipfile.ZipFile(path) as wheel:
        names = set(wheel.namelist())
    errors = [f"{path.name}: missing {name}" for name in REQUIRED_IN_WHEEL if name not in names]
    # Every file of the package in the source tree must be in the wheel: a
    # folder without __init__.py, or data that package-data does not match,
    # would silently be left out.
    for file in sorted((source_root / PACKAGE).rglob("*")):
        if not file.is_file() or "__pycache__" in file.parts or file.suffix in {".pyc", ".pyo"}:
            continue
        name = file.relative_to(source_root).as_posix()
        if name not in names:
            errors.append(f"{path.name}: missing {name}")
    for name in sorted(names):
        top = PurePosixPath(name).parts[0]
        if top in FORBIDDEN_TOP_LEVEL:
            errors.append(f"{path.name}: should not contain {name}")
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        errors.append(f"{path.name}: LICENSE not in .dist-info/licenses/")
    return errors


def check_sdist(path: Path) -> list[str]:
    with tarfile.open(path) as sdist:
        names = {
            PurePosixPath(n).relative_to(PurePosixPath(n).parts[0]).as_posix()
            for n in sdist.getnames()
            if len(PurePosixPath(n).parts) > 1
        }
    return [f"{path.name}: missing {name}" for name in REQUIRED_IN_SDIST if name not in names]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    dist = Path(argv[1])
    source_root = Path(__file__).resolve().parent.parent
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        print(f"expected one wheel and one sdist in {dist}, found {wheels + sdists}")
        return 1
    errors = check_wheel(wheels[0], source_root) + check_sdist(sdists[0])
    for error in errors:
        print(error)
    if errors:
        return 1
    print(f"ok: {wheels[0].name}, {sdists[0].name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
