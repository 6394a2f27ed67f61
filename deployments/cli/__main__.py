"""`python -m deployments.cli ...`, the same as `pynomaly ...`."""

from deployments.cli import app

app()
