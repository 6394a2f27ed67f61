"""`pynomaly deploy`: register prefect.yaml's deployments on the Prefect server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deployments.cli.options import DebugOpt, JsonOpt
from deployments.cli.output import run, say, show


def deploy(
    name: Annotated[
        list[str] | None,
        typer.Option("--name", "-n", help="Deployment name from prefect.yaml (repeatable)."),
    ] = None,
    prefect_file: Annotated[
        Path | None,
        typer.Option("--prefect-file", help="Project file [default: REPO/prefect.yaml]."),
    ] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Register the Prefect deployments and the drift -> retrain automation."""
    from deployments.deploy import register as register_project

    result = run(
        lambda: register_project(name or None, prefect_file),
        as_json=as_json,
        debug=debug,
        status="Deploying…",
        prefect=False,  # deployments go to a Prefect server the user runs, never the embedded one
    )
    if as_json:
        return
    for dep in result["deployments"]:
        show(
            dep["name"],
            {
                "id": dep["id"],
                "work pool": dep["work_pool"],
                "schedules": ", ".join(dep["schedules"]) or "on demand",
            },
        )
    auto = result["automation"]
    say(
        f"automation: {auto['name']} ({auto['event']} -> retrain)"
        if auto
        else "automation: not created (the retrain deployment was not deployed)",
        f"Prefect API: {result['api_url']}  ({result['seconds']} s)",
    )
