"""The `pynomaly` console script: hand the command to this home's warm process when one runs
for this environment and code (deployments/local/warm.py), else run the typer app here.

Imports only the standard library before that choice, so a handed-over command starts in
milliseconds; `python -m deployments.cli` always runs in-process.
"""

from __future__ import annotations

import contextlib
import os
import sys

from deployments.local import warm


def main() -> None:
    env = dict(os.environ)  # as the user set it, before a command sets anything
    code = warm.handoff(sys.argv, env)
    if code is not None:
        sys.exit(code)
    from deployments.cli import app

    try:
        app()
    finally:
        with contextlib.suppress(Exception):  # never the command's outcome
            warm.after_command(env)


if __name__ == "__main__":
    main()
