"""`pynomaly metrics serve|show` (Prometheus exporter) and `pynomaly health`."""

from __future__ import annotations

import os
import threading
from typing import Annotated, Any

import typer
from rich.table import Table

from deployments.cli.options import DebugOpt, JsonOpt, group
from deployments.cli.output import out, run, say, show

metrics_app = group("Prometheus metrics: serve or show.")

PortOpt = Annotated[int, typer.Option("--port", help="Port of the /metrics endpoint.")]
HostOpt = Annotated[
    str, typer.Option("--host", help="Address to listen on (0.0.0.0 inside a container).")
]
MaxBackupAgeOpt = Annotated[
    float, typer.Option("--max-backup-age-hours", help="Older newest backup = unhealthy.")
]


def _sources() -> Any:
    """What metrics and health read; an unreachable tracking server fails a scrape or check in
    seconds, not minutes of retries (values set in the environment win)."""
    from deployments.monitoring.exporter import Sources
    from pynomaly.settings import get_settings

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    return Sources.from_settings(get_settings())


@metrics_app.command()
def serve(
    port: PortOpt = 9108,
    host: HostOpt = "127.0.0.1",
    debug: DebugOpt = False,
) -> None:
    """Serve /metrics for Prometheus; every scrape reads the platform's state afresh."""

    def work() -> dict[str, Any]:
        from prometheus_client import start_http_server

        from deployments.monitoring.exporter import PlatformCollector, metrics_registry

        start_http_server(port, addr=host, registry=metrics_registry(PlatformCollector(_sources())))
        return {"url": f"http://{host}:{port}/metrics"}

    result = run(work, as_json=False, debug=debug, status="Starting the exporter…", prefect=False)
    say(f"Serving {result['url']} (Ctrl+C stops)")
    try:
        threading.Event().wait()  # the server runs in a daemon thread
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@metrics_app.command("show")
def show_(as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Read every metric once and print it."""

    def work() -> dict[str, Any]:
        from deployments.monitoring.exporter import PlatformCollector, metrics_registry, samples

        collector = PlatformCollector(_sources())
        try:
            return {"samples": samples(metrics_registry(collector))}
        finally:
            collector.close()

    result = run(work, as_json=as_json, debug=debug, status="Reading metrics…", prefect=False)
    if not as_json:
        table = Table("metric", "labels", "value", title="Pynomaly metrics", title_justify="left")
        for s in result["samples"]:
            labels = ", ".join(f"{k}={v}" for k, v in s["labels"].items())
            table.add_row(s["name"], labels, f"{s['value']:.6g}")
        out.print(table)


def health(
    max_backup_age_hours: MaxBackupAgeOpt = 26.0,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Check the results DB, MLflow (every model has a champion whose artifacts load), artifact
    store and backups.

    Exit code 0 when everything is healthy, 1 when anything is not.
    """

    def work() -> dict[str, Any]:
        from deployments.monitoring.health import health_report
        from pynomaly.settings import get_settings

        return health_report(_sources(), get_settings().artifact_store, max_backup_age_hours)

    result = run(work, as_json=as_json, debug=debug, status="Checking health…", prefect=False)
    if not as_json:
        rows = {
            name: ("ok" if c["ok"] else "FAIL") + f"  {c['detail']}"
            for name, c in result["checks"].items()
        }
        show("Pynomaly health", rows)
        say("healthy" if result["healthy"] else "UNHEALTHY")
    if not result["healthy"]:
        raise typer.Exit(1)
