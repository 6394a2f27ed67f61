"""The backup-platform and restore-drill flows on embedded defaults, under the Prefect harness."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.backup_platform import backup_platform
from flows.restore_drill import restore_drill
from pynomaly.settings import get_settings
from tasks import backup
from tasks.results import replace_batch, results_engine
from tasks.store import ArtifactStore


def test_backup_flow_then_drill_flow(platform_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime

    import pandas as pd

    monkeypatch.setenv("PYNOMALY_BACKUP_KEEP_LAST", "1")
    get_settings.cache_clear()
    settings = get_settings()
    platform_home.mkdir(parents=True)
    engine = results_engine(settings.results_url)
    frame = pd.DataFrame({"row_index": range(25), "score": 0.5, "is_anomaly": False})
    replace_batch(
        engine,
        "b1",
        [frame],
        model_name="m",
        model_version=1,
        scored_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    engine.dispose()
    store = ArtifactStore(settings.artifact_store, settings.s3_endpoint_url)
    store.put_bytes("expectations/m.json", b"{}")
    store = backup.backup_store(settings.backup_store_root)
    old = backup.new_backup_id(datetime(2020, 1, 1, tzinfo=UTC))  # past every retention window
    store.put_bytes(f"{old}/{backup.MANIFEST}", b"{}")

    result = backup_platform()

    assert result["counts"]["detection_rows"] == 25
    assert result["counts"]["expectation_suites"] == 1
    assert result["pruned"] == [old]
    assert [b["id"] for b in backup.list_backups(store)] == [result["id"]]

    report = restore_drill()

    assert report["id"] == result["id"]
    assert report["verification"]["counts"]["detection_rows"] == 25
    assert report["verification"]["problems"] == []


def test_backup_create_with_a_broken_champion_succeeds_and_reports_it(
    platform_home: Path,
) -> None:
    import json

    from backup_state import log_versions
    from typer.testing import CliRunner

    from deployments.cli.backup import backup_app
    from registry.versions import client

    settings = get_settings()
    platform_home.mkdir(parents=True)
    log_versions(settings, "alpha", 1)
    log_versions(settings, "beta", 1)
    location = client(settings.mlflow_tracking_uri).get_model_version_download_uri("beta", "1")
    (Path(location.removeprefix("file://")) / "MLmodel").unlink()  # beta's champion is broken

    get_settings.cache_clear()
    result = CliRunner().invoke(backup_app, ["create", "--json"])

    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    (warning,) = created["warnings"]
    assert warning.startswith("champion beta v1 does not load or score: ")
    assert created["counts"]["model_versions"] == 2  # everything else was backed up
    store = backup.backup_store(settings.backup_store_root)
    key = backup.backup_key(settings.backup_secret, settings.home_dir, store)
    assert [(b["id"], b["status"], b["warnings"]) for b in backup.list_backups(store, key)] == [
        (created["id"], "ok", [warning])
    ]

    get_settings.cache_clear()
    shown = CliRunner().invoke(backup_app, ["create"])
    assert shown.exit_code == 0, shown.output
    assert "warning 1" in shown.stdout and "champion beta v1" in " ".join(shown.stdout.split())
