"""Where the platform keeps state (databases, artifact store), as explicit values."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pynomaly.errors import InputError
from tasks.backup.databases import DB_ROLES, Database
from tasks.store import ArtifactStore


@dataclass(frozen=True)
class PlatformState:
    """Everywhere the platform keeps state; backups read it and restores write it."""

    mlflow: Database
    results: Database
    artifacts: ArtifactStore
    optuna: Database | None = None
    prefect: Database | None = None
    # The MLflow server in front of the `mlflow` database, when there is one: models whose
    # artifacts it proxies (mlflow-artifacts:/ URIs) load only through it.
    server_uri: str | None = None
    # Where backups, restores and drills stage files (None: the system temp folder); staging
    # folders name their process, so one a killed command left is removed by the next.
    staging: Path | None = None
    pg_bin: Path | None = None  # folder of pg_dump/pg_restore (None: found by pg_tool)

    def databases(self) -> dict[str, Database]:
        """role -> database, in dump order."""
        return {role: getattr(self, role) for role in DB_ROLES if getattr(self, role) is not None}

    @property
    def tracking_uri(self) -> str:
        return self.server_uri or self.mlflow.url


def platform_state(
    *,
    tracking_uri: str,
    backend_uri: str | None,
    results_url: str,
    artifact_root: str,
    s3_endpoint_url: str | None = None,
    optuna_url: str | None = None,
    prefect_url: str | None = None,
    staging: Path | None = None,
    pg_bin: Path | None = None,
) -> PlatformState:
    """The platform's state from its locations; an MLflow server's database is `backend_uri`."""
    from registry.tracking import is_tracking_server

    server_uri = None
    if is_tracking_server(tracking_uri):
        server_uri = tracking_uri
        if not backend_uri:
            raise InputError(
                f"the MLflow tracking URI {tracking_uri} is a server: backups read its database, "
                "so set PYNOMALY_MLFLOW_BACKEND_URI to the server's backend store URL"
            )
        tracking_uri = backend_uri
    return PlatformState(
        mlflow=Database("mlflow", tracking_uri),
        results=Database("results", results_url),
        artifacts=ArtifactStore(artifact_root, s3_endpoint_url),
        optuna=Database("optuna", optuna_url) if optuna_url else None,
        prefect=Database("prefect", prefect_url) if prefect_url else None,
        server_uri=server_uri,
        staging=staging,
        pg_bin=pg_bin,
    )


def backup_store(root: str, endpoint_url: str | None = None) -> ArtifactStore:
    """The backup store at a folder or s3://bucket/prefix (S3 objects encrypted at rest)."""
    return ArtifactStore(root, endpoint_url, encrypted=True)
