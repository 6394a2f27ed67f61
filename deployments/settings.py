"""One settings object for the whole platform, read lazily at the edge (CLI, flows)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.store import ArtifactStore


class Settings(BaseSettings):
    """Where Pynomaly keeps its state. Every field is `PYNOMALY_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="PYNOMALY_", extra="ignore")

    home: Path = Field(Path(".pynomaly"), description="Folder for all embedded state.")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI.")
    mlflow_backend_uri: str | None = Field(
        None, description="Database behind an MLflow server (backups dump it directly)."
    )
    artifact_root: str | None = Field(
        None, description="Artifact store: a folder or s3://bucket/prefix."
    )
    results_db_url: str | None = Field(None, description="SQLAlchemy URL of the results database.")
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint (MinIO, moto); empty for AWS."
    )
    experiment: str = Field("pynomaly", description="MLflow experiment for training runs.")
    optuna_storage: str | None = Field(
        None, description="Optuna RDB storage URL shared by tuning workers (PostgreSQL)."
    )
    chunk_rows: int = Field(50_000, gt=0, description="Rows per chunk when reading and scoring.")

    # Promotion gate, drift and retraining
    gate_margin: float = Field(0.02, ge=0, description="Allowed drop of AP/ROC-AUC vs champion.")
    drift_threshold: float = Field(
        0.5, gt=0, le=1, description="Drifted-column share that retrains."
    )
    retrain_cooldown_hours: float = Field(6.0, ge=0, description="Hours between drift retrains.")
    max_retrains_per_day: int = Field(2, ge=0, description="Cap on retrains per model per day.")

    # Backups
    backup_root: str | None = Field(
        None, description="Backup store: a folder or s3://bucket/prefix."
    )
    backup_keep_last: int = Field(7, ge=1, description="Newest backups always kept.")
    backup_keep_daily_days: int = Field(14, ge=0, description="Days with one backup kept per day.")
    backup_keep_weekly_weeks: int = Field(
        8, ge=0, description="Weeks with one backup kept per week."
    )

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{self.home_dir / 'mlflow.db'}"

    @property
    def artifact_store(self) -> str:
        return self.artifact_root or str(self.home_dir / "artifacts")

    @property
    def results_url(self) -> str:
        return self.results_db_url or f"sqlite:///{self.home_dir / 'results.db'}"

    @property
    def prefect_home(self) -> Path:
        return self.home_dir / "prefect"

    @property
    def backup_store_root(self) -> str:
        return self.backup_root or str(self.home_dir / "backups")

    def export_client_environment(self) -> None:
        """Tell MLflow's S3 client where the endpoint is (it reads only the environment)."""
        if self.s3_endpoint_url:
            os.environ["MLFLOW_S3_ENDPOINT_URL"] = self.s3_endpoint_url

    def store(self) -> ArtifactStore:
        """The artifact store (snapshots, suites, quarantine, MLflow artifacts)."""
        return ArtifactStore(self.artifact_store, self.s3_endpoint_url)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process (read once, on first use)."""
    return Settings()


# The placeholder of .env.example: a value holding it was never replaced by a real secret.
PLACEHOLDER = "change-me"
# Variables the platform, its services and their clients read (their secrets among them).
CHECKED_PREFIXES = ("PYNOMALY_", "MLFLOW_", "PREFECT_", "AWS_", "POSTGRES_", "MINIO_", "PG")


def refuse_placeholders(values: dict[str, str], where: str = "the environment") -> None:
    """Raise InputError naming the first variable whose value still holds `change-me`."""
    from data_checks.errors import InputError

    for name in sorted(values):
        if name.startswith(CHECKED_PREFIXES) and PLACEHOLDER in values[name].lower():
            raise InputError(
                f"{name} in {where} holds the placeholder {PLACEHOLDER!r} from .env.example; "
                "set a real secret (python -c 'import secrets; print(secrets.token_urlsafe(24))')"
            )


def apply_runtime_environment(settings: Settings) -> None:
    """Point Prefect, MLflow and boto3 at this platform's state; call once at the edge.

    Prefect reads its settings when it is first imported, so this must run before that.
    Values the user set explicitly in the environment win.
    """
    refuse_placeholders(dict(os.environ))
    # Embedded state is private: the home, SQLite files, keys and artifacts this process (and
    # Prefect's and MLflow's code in it) creates are 0600/0700 from their creation.
    os.umask(0o077)
    settings.home_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(settings.prefect_home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    settings.export_client_environment()
