"""The backup-platform and restore-drill flows on embedded defaults, under the Prefect harness."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.settings import get_settings
from flows.backup_platform import backup_platform
from flows.restore_drill import restore_drill
from tasks import backup
from tasks.results import replace_batch, results_engine


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
    settings.store().put_bytes("expectations/m.json", b"{}")
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
