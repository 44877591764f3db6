#!/usr/bin/env python
"""Django's command-line utility for the test project."""

import os
import sys
from pathlib import Path


def main() -> None:
    # Use the idempotency package of this checkout, whether or not it is installed.
    repo_root = str(Path(__file__).resolve().parent.parent)
    if repo_root not in sys.path:
        sys.path.insert(1, repo_root)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
