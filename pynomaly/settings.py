"""One settings object for the whole platform, read lazily at the edge (CLI, flows)."""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pynomaly.errors import InputError

ENV_PREFIX = "PYNOMALY_"
# Set (with PREFECT_API_URL) by a command attached to the embedded background Prefect API.
EMBEDDED_PREFECT_URL_ENV = "PYNOMALY_PREFECT_EMBEDDED_URL"


class Settings(BaseSettings):
    """Where Pynomaly keeps its state. Every field is `PYNOMALY_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

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
    prefect_mode: Literal["background", "ephemeral"] = Field(
        "background",
        description="Without PREFECT_API_URL: one Prefect API kept running under the home and "
        "shared by commands (background), or Prefect's own per-command server (ephemeral).",
    )
    prefect_idle_minutes: float = Field(
        30.0, gt=0, description="Minutes without a command before the background API stops."
    )
    train_max_rows: int = Field(
        1_000_000,
        ge=1_000,
        description="Rows a model is trained on at most: beyond it, a sample stratified by the "
        "label column (the same rows for the same data), read in chunks.",
    )
    warm: bool = Field(
        True,
        description="With the background API: a warm process per home (libraries imported "
        "once) runs later commands as forks of itself; false runs every command in-process.",
    )

    # Promotion gate, drift and retraining
    gate_margin: float = Field(0.02, ge=0, description="Allowed drop of AP/ROC-AUC vs champion.")
    drift_threshold: float = Field(
        0.5, gt=0, le=1, description="Drifted-column share that retrains."
    )
    drift_sample_rows: int = Field(
        100_000,
        ge=1_000,
        description="Rows drawn at random from each side of a drift check (the same rows for "
        "the same data); larger data is sampled while read, never loaded whole.",
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
    backup_key: SecretStr | None = Field(
        None, description="Signs backup manifests (embedded default: $PYNOMALY_HOME/backup.key)."
    )
    pg_bin: Path | None = Field(
        None, description="Folder of the PostgreSQL programs (default: newest installed, PATH)."
    )

    @field_validator("results_db_url", "optuna_storage", "mlflow_backend_uri")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        """A database URL SQLAlchemy can parse (checked here, not when the flow first opens it)."""
        if value:
            import sqlalchemy as sa
            from sqlalchemy.exc import ArgumentError

            try:
                sa.make_url(value)
            except ArgumentError:
                raise ValueError("not a database URL (e.g. postgresql://user@host/db)") from None
        return value

    @field_validator("artifact_root", "backup_root")
    @classmethod
    def _store_root(cls, value: str | None) -> str | None:
        """An s3:// store names its bucket."""
        if value and value.startswith("s3://") and not value[len("s3://") :].split("/")[0]:
            raise ValueError("an s3:// store needs a bucket (s3://bucket/prefix)")
        return value

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{self.home_dir / 'mlflow.db'}"

    @property
    def prefect_server(self) -> bool:
        """Whether flows talk to a Prefect server (events reach automations), not the embedded
        one: Prefect's own PREFECT_API_URL is set, and not to the background embedded API."""
        url = os.environ.get("PREFECT_API_URL")
        return bool(url) and url != os.environ.get(EMBEDDED_PREFECT_URL_ENV)

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
    def staging_dir(self) -> Path:
        """Where backups, restores and drills stage files (cleaned of killed commands' folders)."""
        return self.home_dir / "staging"

    @property
    def backup_store_root(self) -> str:
        return self.backup_root or str(self.home_dir / "backups")

    @property
    def backup_secret(self) -> str | None:
        return self.backup_key.get_secret_value() if self.backup_key else None

    @property
    def prefect_database_url(self) -> str | None:
        """The embedded Prefect SQLite DB, unless a Prefect server (or another DB) holds it."""
        if self.prefect_server:
            return None  # a Prefect server owns its database; back it up where it runs
        path = self.prefect_home / "prefect.db"
        configured = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL")
        if configured:
            import sqlalchemy as sa

            if Path(sa.make_url(configured).database or "") != path:
                return None
        return f"sqlite:///{path}"

    def export_client_environment(self) -> None:
        """Tell MLflow's S3 client where the endpoint is (it reads only the environment)."""
        if self.s3_endpoint_url:
            os.environ["MLFLOW_S3_ENDPOINT_URL"] = self.s3_endpoint_url


def settings_error(exc: ValidationError) -> str:
    """A pydantic validation error as one line naming each environment variable and value."""
    parts = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{ENV_PREFIX}{field.upper()}={error.get('input')!r}: {message}")
    return "; ".join(parts)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process (read once, on first use); a bad value names its variable."""
    try:
        return Settings()
    except ValidationError as exc:
        raise InputError(settings_error(exc)) from None


def check_writable(folder: Path, variable: str) -> None:
    """A state folder that exists or can be made, and takes a file (before Prefect tries)."""
    try:
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{variable}={folder}: is a file, not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"{variable}={folder}: cannot write there ({reason})") from None


# The placeholder of .env.example: a value holding it was never replaced by a real secret.
PLACEHOLDER = "change-me"
# Variables the platform, its services and their clients read (their secrets among them).
CHECKED_PREFIXES = ("PYNOMALY_", "MLFLOW_", "PREFECT_", "AWS_", "POSTGRES_", "MINIO_", "PG")


def refuse_placeholders(values: dict[str, str], where: str = "the environment") -> None:
    """Raise InputError naming the first variable whose value still holds `change-me`."""
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
    check_writable(settings.home_dir, f"{ENV_PREFIX}HOME")
    if "PREFECT_HOME" in os.environ:
        check_writable(Path(os.environ["PREFECT_HOME"]).expanduser(), "PREFECT_HOME")
    else:
        check_writable(settings.prefect_home, f"{ENV_PREFIX}HOME")
        os.environ["PREFECT_HOME"] = str(settings.prefect_home)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    settings.export_client_environment()
