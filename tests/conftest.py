"""Fixtures shared by every test layer: a private Prefect home and a fresh platform home."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PLATFORM_VARS = [
    "PYNOMALY_HOME",
    "PYNOMALY_TRACKING_URI",
    "PYNOMALY_ARTIFACT_ROOT",
    "PYNOMALY_RESULTS_DB_URL",
    "PYNOMALY_S3_ENDPOINT_URL",
    "PYNOMALY_OPTUNA_STORAGE",
    "PYNOMALY_BACKUP_ROOT",
    "MLFLOW_TRACKING_URI",
]


def pytest_configure(config: pytest.Config) -> None:
    """Before Prefect is imported: a private Prefect home, no analytics, quiet consoles."""
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="pynomaly-test-prefect-")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    # Commands of the suite start Prefect's per-command API, so no test home leaves a
    # background server running; tests/integration/test_background_prefect.py covers that path.
    os.environ["PYNOMALY_PREFECT_MODE"] = "ephemeral"
    for var in PLATFORM_VARS:
        os.environ.pop(var, None)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API for the whole session (it takes seconds to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def platform_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh PYNOMALY_HOME (embedded MLflow, artifacts, results) for one test."""
    from pynomaly.settings import get_settings

    for var in PLATFORM_VARS:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("PYNOMALY_HOME", str(home))
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()
