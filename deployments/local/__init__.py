"""Local services: the servers (PostgreSQL, MLflow, Prefect) run by supervisord."""
