"""Outermost layer: CLI, settings, local services, Prefect deployments, infrastructure files."""
