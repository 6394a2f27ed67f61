"""`pynomaly`: the command line over the flows. Heavy imports happen inside commands only.

One module per command group; each imports `deployments.cli.output` and `.options`, never
this package, so mounting them here makes no cycle.
"""

from __future__ import annotations

import typer

from deployments.cli import backup, deploy, metrics, pipeline, registry, services
from deployments.cli.options import OneLineUsageErrors

app = typer.Typer(
    cls=OneLineUsageErrors,
    help="Pynomaly: anomaly detection you can trust, trace and restore.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for command in (pipeline.ingest, pipeline.train, pipeline.score, pipeline.pipeline, pipeline.demo):
    app.command()(command)
app.add_typer(services.services_app, name="services", help="Local production services.")
app.add_typer(backup.backup_app, name="backup", help="Back up, verify, restore and prune.")
app.add_typer(
    registry.registry_app, name="registry", help="Models: list, show, gate, promote, roll back."
)
app.command("drift")(registry.drift)
app.add_typer(metrics.metrics_app, name="metrics", help="Prometheus metrics: serve or show.")
app.command("health")(metrics.health)
app.command("feedback")(pipeline.feedback)
app.command(help="Register the Prefect deployments and the drift -> retrain automation.")(
    deploy.deploy
)
