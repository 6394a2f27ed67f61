"""`pynomaly`: the command line over the flows. Heavy imports happen inside commands only.

One module per command group; each imports `deployments.cli.output` and `.options`, never
this package, so mounting them here makes no cycle.
"""

from __future__ import annotations

from deployments.cli import backup, deploy, metrics, pipeline, registry, services
from deployments.cli.options import OneLineUsageErrors, group

app = group("Pynomaly: anomaly detection you can trust, trace and restore.", cls=OneLineUsageErrors)
for command in (pipeline.ingest, pipeline.train, pipeline.score, pipeline.pipeline, pipeline.demo):
    app.command()(command)
app.add_typer(services.services_app, name="services")
app.add_typer(backup.backup_app, name="backup")
app.add_typer(registry.registry_app, name="registry")
app.command("drift")(registry.drift)
app.add_typer(metrics.metrics_app, name="metrics")
app.command("health")(metrics.health)
app.command("feedback")(pipeline.feedback)
app.command()(deploy.deploy)
