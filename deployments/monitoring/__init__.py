"""Monitoring: the Prometheus exporter, the health check, alert rules and dashboards."""
