"""Restoring a backup whose results DB predates the model-version key: every row comes back,
and the DB is migrated in place the next time it is opened."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from old_results import create_old_results_db, expected_summaries, primary_key, read_rows
from typer.testing import CliRunner

from deployments.cli import app
from pynomaly.settings import get_settings
from tasks.results import batch_counts, replace_batch, results_engine


def invoke(*args: str):
    get_settings.cache_clear()
    result = CliRunner().invoke(app, list(args))
    get_settings.cache_clear()
    return result


def test_restore_of_an_old_schema_results_db(platform_home: Path) -> None:
    url = get_settings().results_url
    platform_home.mkdir(parents=True)
    written = create_old_results_db(url)
    created = invoke("backup", "create", "--json")
    assert created.exit_code == 0, created.output
    backup_id = json.loads(created.stdout)["id"]

    # The live DB moves on: migrated when opened, then a challenger scores b1 beside m1.
    engine = results_engine(url)
    frame = pd.DataFrame({"row_index": range(50), "score": 0.5, "is_anomaly": False})
    at = datetime(2026, 2, 1, tzinfo=UTC)
    replace_batch(engine, "b1", [frame], model_name="m1", model_version=9, scored_at=at)
    engine.dispose()

    restored = invoke("backup", "restore", backup_id, "--yes", "--json")
    assert restored.exit_code == 0, restored.output
    assert json.loads(restored.stdout)["verification"]["problems"] == []

    # The backed-up DB is back as it was, old key included ...
    plain = sa.create_engine(url, poolclass=sa.NullPool)
    assert primary_key(plain, "detection_results") == ["batch_id", "row_index"]
    pd.testing.assert_frame_equal(read_rows(plain), written)
    plain.dispose()
    # ... and opening it for scoring migrates it in place, keeping every row.
    engine = results_engine(url)
    assert primary_key(engine, "detection_results")[-1] == "row_index"
    assert len(primary_key(engine, "detection_results")) == 4
    pd.testing.assert_frame_equal(read_rows(engine), written)
    replace_batch(engine, "b1", [frame], model_name="m1", model_version=9, scored_at=at)
    m1 = expected_summaries(written)[("b1", "m1", 1)]
    assert batch_counts(engine, "b1", model_name="m1", model_version=1) == m1
    assert batch_counts(engine, "b1", model_name="m1", model_version=9) == (50, 0)
    engine.dispose()
