"""What every `pynomaly` command shares: `run` (environment, signals, one-line errors, exit
codes, --json), `show` (a two-column table), the `out`/`err` consoles. Imports no command."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from pynomaly.settings import Settings

out = Console()
err = Console(stderr=True)


def quiet_libraries() -> None:
    """Keep stderr for our own one-line messages: library chatter goes to the Prefect API/logs."""
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_LOGGING_INTERNAL_LEVEL", "CRITICAL")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    warnings.filterwarnings("ignore")
    for name in ("mlflow", "alembic", "great_expectations", "urllib3", "botocore", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run(
    work: Callable[[], dict[str, Any]],
    *,
    as_json: bool,
    debug: bool,
    status: str,
    sources: tuple[str | None, ...] = (),
    checks: Callable[[], object] | None = None,
    prefect: bool = True,
) -> dict:
    """Run a command body: environment first, errors as one line (exit 2 bad input, 1 other).

    `checks` validates the arguments before Prefect starts; with --json, whatever libraries
    print on stdout (MLflow's "View run" lines) is kept off it: stdout is the one JSON object.
    Commands that run no flow pass `prefect=False`: they neither start nor use a Prefect API.
    """
    from pynomaly.settings import apply_runtime_environment, get_settings

    if not debug:
        quiet_libraries()
    try:
        with _signals_as_interrupts():
            for source in sources:
                _check_local_file(source)
            if checks is not None:
                checks()
            settings = get_settings()
            apply_runtime_environment(settings)
            _remove_leftovers(settings.staging_dir)
            if prefect:
                _attach_prefect(settings)
            if not debug:
                quiet_libraries()  # again: importing MLflow resets its logger levels
            stray = sys.stderr if debug else io.StringIO()
            with (
                err.status(status) if err.is_terminal else contextlib.nullcontext(),
                contextlib.redirect_stdout(stray) if as_json else contextlib.nullcontext(),
            ):
                result = work()
    except typer.Exit:
        raise
    except (KeyboardInterrupt, Exception) as exc:
        if debug:
            traceback.print_exc()
        message, code = _error_line(exc)
        err.print(message, markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code) from None
    if as_json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
    return result


def _error_line(exc: BaseException) -> tuple[str, int]:
    """The one stderr line and exit code of a failed command: 2 bad input, 1 other, 128+signal."""
    from pynomaly.errors import InputError, first_line

    if isinstance(exc, KeyboardInterrupt):
        # Ctrl-C, SIGTERM or SIGHUP: Prefect's ephemeral server is stopped at exit (atexit).
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        return f"pynomaly: interrupted ({signal.Signals(signum).name})", 128 + signum
    if isinstance(exc, InputError):
        # One line whatever the message holds (a value quoted from a file may span lines).
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        return f"error: {message}", 2
    return f"error: {type(exc).__name__}: {first_line(exc)} (run with --debug for the traceback)", 1


class Interrupted(KeyboardInterrupt):
    """A termination signal raised like Ctrl-C, so cleanup runs as it does for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals_as_interrupts() -> Iterator[None]:
    """While a command body runs, SIGTERM and SIGHUP raise `Interrupted` (the default would end
    the process at once, leaving Prefect's ephemeral API server running)."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, _raise_interrupted)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _remove_leftovers(staging_dir: Path) -> None:
    """What killed commands of this home left: their Prefect API servers, staging folders."""
    from deployments.leftovers import mark_command, stop_orphan_servers
    from tasks.staging import remove_dead_staging

    mark_command()  # before Prefect starts its server: the server inherits the name
    stop_orphan_servers(Path(os.environ["PREFECT_HOME"]))
    remove_dead_staging(staging_dir)


def _attach_prefect(settings: Settings) -> None:
    """On embedded defaults, use (or start) the Prefect API kept running under the home
    instead of Prefect starting and stopping one per command; a set PREFECT_API_URL wins."""
    if settings.prefect_mode != "background" or os.environ.get("PREFECT_API_URL"):
        return
    from deployments.local.background import attach

    timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 90))
    attach(Path(os.environ["PREFECT_HOME"]), settings.prefect_idle_minutes, timeout)
    if "prefect.context" in sys.modules:
        # A warm command process (deployments/local/warm.py) imported Prefect before this
        # command's environment was in place: Prefect reads its settings again.
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def _check_local_file(source: str | None) -> None:
    """Fail at once on a missing local file, an s3:// URI without a key, a SQL URL with a
    password or an unset env: reference, before the seconds Prefect takes to start."""
    from pynomaly.errors import InputError
    from tasks.ingest import check_s3_source, check_source, is_reference

    if not source:
        return
    # Before Prefect records the source as a flow parameter: no password may be in it.
    check_source(source)
    if is_reference(source):
        return
    if "://" not in source and not os.path.exists(source):
        raise InputError(f"{source}: file not found")
    if source.startswith("s3://"):
        check_s3_source(source)


def show(title: str, rows: dict[str, Any]) -> None:
    """A two-column table on stdout."""
    table = Table(title=title, show_header=False, title_justify="left")
    for key, value in rows.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        table.add_row(key, str(value))
    out.print(table)


def say(*lines: str) -> None:
    """Lines on stdout as given (no markup, no highlighting, no wrapping)."""
    for line in lines:
        out.print(line, markup=False, highlight=False, soft_wrap=True)
