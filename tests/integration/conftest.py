"""Real local services for integration tests: PostgreSQL, S3 (moto server), MLflow, Prefect.

Session fixtures start a service the first time a test asks for it and stop it at session end;
a service that fails to start fails the test loudly (never a skip).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import servers

TEST_ACCESS_KEY = "testing"
TEST_SECRET_KEY = "testing"


@pytest.fixture(scope="session")
def services_root() -> Iterator[Path]:
    """A private folder for all service state, removed at session end."""
    # Not pytest's tmp_path: that sits in a 0700 folder the `postgres` user cannot traverse.
    root = Path(tempfile.mkdtemp(prefix="pynomaly-it-", dir="/tmp"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(services_root: Path) -> Iterator[servers.PostgresServer]:
    """A throwaway PostgreSQL 15 server; `.create_database(name)` returns a SQLAlchemy URL."""
    server = servers.start_postgres(services_root / "postgres")
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server: servers.PostgresServer) -> Iterator[str]:
    """SQLAlchemy URL (postgresql+psycopg2) of a new empty database, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    url = pg_server.create_database(name)
    yield url
    pg_server.drop_database(name)


@pytest.fixture(scope="session")
def s3_endpoint(services_root: Path) -> Iterator[str]:
    """Endpoint URL of a moto S3 server; test AWS credentials are set for the whole session."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
        mp.setenv("AWS_DEFAULT_REGION", servers.TEST_REGION)
        server = servers.start_moto(services_root)
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """Name of a fresh, empty bucket on the moto server."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    servers.create_bucket(s3_endpoint, name)
    return name


@pytest.fixture(scope="session")
def mlflow_server(
    services_root: Path, pg_server: servers.PostgresServer, s3_endpoint: str
) -> Iterator[str]:
    """Tracking URI of an MLflow server: PostgreSQL backend store, S3 artifacts it proxies."""
    backend = pg_server.create_database("mlflow")
    servers.create_bucket(s3_endpoint, "mlflow-artifacts")
    server = servers.start_mlflow(
        services_root / "mlflow",
        backend_store_uri=backend,
        artifacts_destination="s3://mlflow-artifacts/mlflow",
        s3_endpoint_url=s3_endpoint,
    )
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def prefect_server(services_root: Path, pg_server: servers.PostgresServer) -> Iterator[str]:
    """API URL (http://127.0.0.1:PORT/api) of a Prefect server on PostgreSQL."""
    pg_server.create_database("prefect")
    server = servers.start_prefect(
        services_root / "prefect", pg_server.database_url("prefect", "postgresql+asyncpg")
    )
    yield server.url
    server.stop()


@pytest.fixture
def production_env(mlflow_server: str, pg_url: str, s3_endpoint: str, s3_bucket: str):
    """`env(home)`: the PYNOMALY_*/AWS_* settings a worker or flow needs to use these services."""

    def env(home: Path) -> dict[str, str]:
        return {
            "PYNOMALY_HOME": str(home),
            "PYNOMALY_TRACKING_URI": mlflow_server,
            "PYNOMALY_RESULTS_DB_URL": pg_url,
            "PYNOMALY_ARTIFACT_ROOT": f"s3://{s3_bucket}/artifacts",
            "PYNOMALY_S3_ENDPOINT_URL": s3_endpoint,
            "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
            "AWS_DEFAULT_REGION": servers.TEST_REGION,
        }

    return env
