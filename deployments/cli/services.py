"""`pynomaly services up|status|down`: PostgreSQL, MLflow and Prefect on this machine, run by
supervisord (deployments/local)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from deployments.cli.options import group
from deployments.cli.output import err, quiet_libraries, say

services_app = group("Local production services.")
DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir", help="Folder for service state and logs [default: $PYNOMALY_HOME/services]."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def _layout(folder: Path | None):
    from deployments.local.stack import Layout
    from pynomaly.settings import Settings

    return Layout(folder or Settings().home_dir / "services")


def _prefect_home() -> Path:
    """The Prefect home commands use (PREFECT_HOME, else $PYNOMALY_HOME/prefect)."""
    import os

    from pynomaly.settings import Settings

    configured = os.environ.get("PREFECT_HOME")
    return Path(configured).expanduser() if configured else Settings().prefect_home


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


@services_app.command()
def up(folder: DirOption = None, as_json: JsonOption = False) -> None:
    """Start the services that are not running yet and write DIR/pynomaly.env."""
    from deployments.local import stack
    from pynomaly.errors import InputError
    from pynomaly.settings import Settings

    quiet_libraries()
    began, layout, report = time.monotonic(), _layout(folder), {}

    def note(name: str, entry: dict[str, Any]) -> None:
        report[name] = entry
        took = f" in {entry['startup_seconds']:.1f} s" if "startup_seconds" in entry else ""
        if not as_json:
            say(f"{name:<15} {entry['status']}{took}  {entry['url'] or ''}")

    try:
        stack.refuse_to_start(layout)
        result = stack.up(layout, Settings(), note)
    except InputError as exc:
        raise _fail(str(exc), 2) from None
    except Exception as exc:  # noqa: BLE001 - one line, like every command
        if as_json:
            say(json.dumps({"dir": str(layout.root), "error": str(exc), "services": report}))
        down = f"`pynomaly services down --dir {layout.root}`"
        message = f"{exc}\n(services started so far keep running; stop them with {down})"
        raise _fail(message, 1) from None
    if as_json:
        say(json.dumps(result))
    else:
        say(f"\nready in {time.monotonic() - began:.1f} s; to use these services:")
        say(f"source {result['env_file']}")


@services_app.command()
def status(folder: DirOption = None, as_json: JsonOption = False) -> None:
    """Show each service's URL and health; exit code 1 when one of ours is unhealthy."""
    from deployments.local import background, stack, warm

    result = stack.status(_layout(folder))
    embedded = background.read_state(_prefect_home().expanduser().resolve())
    warm_state = warm.read_state(_prefect_home().expanduser().resolve())
    if warm_state is not None:  # shown, not counted in the health of the services
        result["services"]["pynomaly-warm"] = {
            "url": f"unix:{warm_state['socket']}",
            "healthy": True,
            "running": True,
            "pid": warm_state["pid"],
        }
    if embedded is not None:  # shown, not counted in the health of the services
        url = embedded["url"]
        healthy = background.healthy(url)
        result["services"]["prefect-embedded"] = {
            "url": url,
            "healthy": healthy,
            "running": True,
            "pid": embedded["pid"],
        }
    if as_json:
        say(json.dumps(result))
    elif not result["services"]:
        say(f"no services running in {result['dir']} (start them with `pynomaly services up`)")
    for name, r in result["services"].items() if not as_json else ():
        word = "external" if r.get("external") else ("healthy" if r["healthy"] else "unhealthy")
        pid = f"pid {r['pid']}" if r.get("pid") else ""
        say(f"{name:<15} {word if r['running'] is not False else 'stopped':<10} {r['url']}  {pid}")
    if not result["healthy"]:
        raise typer.Exit(1)


@services_app.command()
def down(folder: DirOption = None, as_json: JsonOption = False) -> None:
    """Stop the services and supervisord (`supervisorctl shutdown`), the embedded Prefect API
    kept running in the background and the warm command process; check nothing remains."""
    from deployments.local import background, stack, warm

    result = stack.down(_layout(folder))
    if warm.stop(_prefect_home()) is not None:  # first: it would hand commands on
        result["stopped"].append("pynomaly-warm")
    if background.stop(_prefect_home()) is not None:
        result["stopped"].append("prefect-embedded")
    if as_json:
        say(json.dumps(result))
    elif not result["stopped"] and not result["remaining"]:
        say("nothing was running")
    for name in result["stopped"] if not as_json else ():
        say(f"{name:<15} stopped")
    if result["remaining"]:
        raise _fail(f"processes still running: {result['remaining']}", 1)
