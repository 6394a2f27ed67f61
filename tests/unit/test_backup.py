"""Backups on embedded defaults: exact retention, round trips, refusals, consistency, migration."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from backup_state import (
    backup_while_scoring,
    batch_counts,
    build_state,
    parts,
    score_rows,
    snapshot,
)
from typer.testing import CliRunner

from data_checks.errors import InputError
from deployments.settings import Settings, get_settings
from tasks import backup
from tasks.results import results_engine

# Tiny platform state (tests/backup_state.py) and its destruction -----------------------------


def drop_all_tables(path: Path) -> None:
    """Destroy a SQLite database's content (the file stays, as a dropped DB's server would)."""
    conn = sqlite3.connect(path)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    conn.execute("PRAGMA foreign_keys = OFF")
    for table in tables:
        conn.execute(f'DROP TABLE IF EXISTS "{table}"')
    conn.commit()
    conn.close()


@pytest.fixture
def platform(platform_home: Path) -> Settings:
    """Embedded-default settings over a fresh home holding a tiny state."""
    settings = get_settings()
    build_state(settings, batch_rows=(300, 120))
    return settings


# Retention (pure) ----------------------------------------------------------------------------


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


RETENTION_TIMES = {
    "a": at("2026-03-11T10:00"),  # Wednesday, ISO week 11
    "b": at("2026-03-11T02:00"),
    "c": at("2026-03-10T22:00"),
    "d": at("2026-03-10T02:00"),
    "e": at("2026-03-09T02:00"),  # Monday, week 11
    "f": at("2026-03-08T02:00"),  # Sunday, week 10
    "g": at("2026-03-07T02:00"),
    "h": at("2026-03-01T02:00"),  # Sunday, week 9
    "i": at("2026-02-20T02:00"),
    "j": at("2026-01-01T02:00"),
}
NOW = at("2026-03-11T12:00")


def test_retention_keeps_newest_daily_and_weekly_exactly() -> None:
    kept = backup.select_retained(RETENTION_TIMES, NOW, 2, 3, 3)
    # newest 2: a, b; days 11/10/9 March: a, c, e; weeks 11/10/9: a, f, h
    assert kept == {"a", "b", "c", "e", "f", "h"}


def test_retention_with_only_keep_last() -> None:
    assert backup.select_retained(RETENTION_TIMES, NOW, 3, 0, 0) == {"a", "b", "c"}


def test_retention_daily_window_counts_today_as_first_day() -> None:
    assert backup.select_retained(RETENTION_TIMES, NOW, 1, 1, 0) == {"a"}
    assert backup.select_retained(RETENTION_TIMES, NOW, 1, 5, 0) == {"a", "c", "e", "f", "g"}


def test_retention_weekly_spans_year_boundary() -> None:
    times = {"x": at("2025-12-29T01:00"), "y": at("2025-12-28T01:00"), "z": at("2025-12-21T01:00")}
    # 2025-12-29 is ISO 2026-W01; 12-28 is 2025-W52; 12-21 is 2025-W51.
    assert backup.select_retained(times, at("2026-01-02T00:00"), 1, 0, 2) == {"x", "y"}


def test_retention_keeps_everything_when_few_and_nothing_when_none() -> None:
    assert backup.select_retained({"a": NOW}, NOW, 7, 0, 0) == {"a"}
    assert backup.select_retained({}, NOW, 7, 14, 8) == set()


def test_backup_id_round_trips_its_time() -> None:
    made = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
    backup_id = backup.new_backup_id(made)
    assert backup_id.startswith("20260504T030201Z-")
    assert backup.backup_time(backup_id) == made
    with pytest.raises(InputError, match="not a backup id"):
        backup.backup_time("yesterday")


def test_prune_deletes_exactly_what_retention_drops(tmp_path: Path) -> None:
    store = backup.backup_store(str(tmp_path / "backups"))
    ids = {}
    for label, when in RETENTION_TIMES.items():
        ids[label] = backup.new_backup_id(when)
        store.put_bytes(f"{ids[label]}/{backup.MANIFEST}", b"{}")
        store.put_bytes(f"{ids[label]}/results.sqlite.gz", b"x")
    # A failed run (no manifest) two days old goes; one still being written stays.
    failed = backup.new_backup_id(NOW - timedelta(days=2))
    running = backup.new_backup_id(NOW - timedelta(minutes=5))
    store.put_bytes(f"{failed}/results.sqlite.gz", b"x")
    store.put_bytes(f"{running}/results.sqlite.gz", b"x")

    result = backup.prune_backups(
        store, keep_last=2, keep_daily_days=3, keep_weekly_weeks=3, now=NOW
    )

    gone = {ids[k] for k in "dgij"} | {failed}
    assert set(result["deleted"]) == gone
    left = {p.name for p in (tmp_path / "backups").iterdir()}
    assert left == {ids[k] for k in "abcefh"} | {running}


# Round trip on embedded defaults -------------------------------------------------------------


def test_backup_destroy_restore_is_identical(platform: Settings) -> None:
    state, store = parts(platform)
    before = snapshot(platform)
    manifest = backup.create_backup(state, store)

    assert manifest["counts"] | {"prefect_flow_runs": 0} == {
        "experiments": 2,  # Default + pynomaly
        "runs": 3,
        "registered_models": 2,
        "model_versions": 3,
        "aliases": 3,  # alpha champion + challenger, beta champion
        "detection_rows": 420,
        "detection_batches": 2,
        "artifacts": len(before["files"]),
        "expectation_suites": 1,
        "prefect_flow_runs": 0,
    }
    assert [(c["model"], c["version"]) for c in manifest["champions"]] == [
        ("alpha", 1),
        ("beta", 1),
    ]
    assert manifest["schema"]["mlflow_alembic_revision"] == backup.mlflow_head_revision()
    stored = Path(platform.backup_store_root) / manifest["id"]
    for name, info in manifest["files"].items():
        assert backup.sha256_of(stored / name) == info["sha256"]

    # Destroy: both databases emptied, the artifact store gone.
    drop_all_tables(platform.home_dir / "mlflow.db")
    drop_all_tables(platform.home_dir / "results.db")
    shutil.rmtree(platform.artifact_store)

    report = backup.restore_backup(state, store, "latest")

    after = snapshot(platform)
    assert after["models"] == before["models"]
    pd.testing.assert_frame_equal(after["rows"], before["rows"])
    assert after["files"] == before["files"]
    assert report["verification"]["problems"] == []
    assert report["verification"]["champions_checked"] == 2
    # The state it overwrote was backed up first.
    listed = {b["id"]: b for b in backup.list_backups(store)}
    assert listed[report["pre_restore_backup"]]["kind"] == "pre-restore"
    assert listed[report["pre_restore_backup"]]["counts"]["detection_rows"] == 0


def test_drill_restores_into_scratch_and_leaves_live_state_alone(platform: Settings) -> None:
    state, store = parts(platform)
    manifest = backup.create_backup(state, store)
    engine = results_engine(platform.results_url)
    score_rows(engine, "batch-after-backup", 50)  # live state moves on after the backup
    engine.dispose()
    live_before = snapshot(platform)
    live_mlflow = (platform.home_dir / "mlflow.db").read_bytes()

    report = backup.drill_restore(state, store, manifest["id"])

    assert report["verification"]["counts"]["detection_rows"] == 420  # the backup's, not live
    assert report["verification"]["champions_checked"] == 2
    assert report["artifact_locations_rewritten"] >= 3  # it loaded the scratch artifacts
    after = snapshot(platform)
    assert after["models"] == live_before["models"]
    pd.testing.assert_frame_equal(after["rows"], live_before["rows"])
    assert after["files"] == live_before["files"]
    assert (platform.home_dir / "mlflow.db").read_bytes() == live_mlflow


def test_drill_fails_when_a_champion_scores_differently(platform: Settings) -> None:
    state, store = parts(platform)
    manifest = backup.create_backup(state, store)
    # Rewrite the recorded scores (and the checksums, so only the scoring check can catch it).
    folder = Path(platform.backup_store_root) / manifest["id"]
    samples = backup.read_json_gz(folder / backup.CHAMPIONS)
    samples[0]["scores"][0] += 1e-9
    backup.write_json_gz(folder / backup.CHAMPIONS, samples)
    manifest["files"][backup.CHAMPIONS]["sha256"] = backup.sha256_of(folder / backup.CHAMPIONS)
    manifest["files"][backup.CHAMPIONS]["bytes"] = (folder / backup.CHAMPIONS).stat().st_size
    for key in ("size_bytes",):
        manifest.pop(key)
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (folder / backup.MANIFEST).write_bytes(body)
    (folder / backup.MANIFEST_SUM).write_text(hashlib.sha256(body).hexdigest())

    with pytest.raises(InputError, match="champion alpha v1 scores"):
        backup.drill_restore(state, store, manifest["id"])


# Refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_backup_is_refused_before_anything_changes(platform: Settings, damage: str) -> None:
    state, store = parts(platform)
    manifest = backup.create_backup(state, store)
    victim = Path(platform.backup_store_root) / manifest["id"] / "results.sqlite.gz"
    data = victim.read_bytes()
    if damage == "flip":
        victim.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    elif damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    else:
        victim.unlink()
    engine = results_engine(platform.results_url)
    score_rows(engine, "batch-after-backup", 50)
    engine.dispose()
    live = snapshot(platform)

    with pytest.raises(InputError, match=r"results\.sqlite\.gz is (corrupted|missing)"):
        backup.restore_backup(state, store, manifest["id"])

    assert [b["id"] for b in backup.list_backups(store)] == [manifest["id"]]  # no safety copy
    pd.testing.assert_frame_equal(snapshot(platform)["rows"], live["rows"])


def test_tampered_manifest_is_refused(platform: Settings) -> None:
    state, store = parts(platform)
    manifest = backup.create_backup(state, store)
    path = Path(platform.backup_store_root) / manifest["id"] / backup.MANIFEST
    path.write_text(path.read_text().replace('"detection_rows": 420', '"detection_rows": 421'))
    with pytest.raises(InputError, match="manifest.json does not match"):
        backup.verify_backup(store, manifest["id"], platform.home_dir / "check")


def test_cli_refuses_corrupted_backup_with_exit_2_and_one_line(platform: Settings) -> None:
    from deployments.backup_cli import backup_app

    state, store = parts(platform)
    manifest = backup.create_backup(state, store)
    victim = Path(platform.backup_store_root) / manifest["id"] / "artifacts.tar.gz"
    victim.write_bytes(victim.read_bytes()[:-10])
    runner = CliRunner()

    get_settings.cache_clear()
    result = runner.invoke(backup_app, ["restore", manifest["id"], "--yes", "--json"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "artifacts.tar.gz is corrupted" in lines[0], result.stderr
    assert result.stdout == ""

    get_settings.cache_clear()
    result = runner.invoke(backup_app, ["verify", manifest["id"], "--json"])
    assert result.exit_code == 2 and "artifacts.tar.gz" in result.stderr

    get_settings.cache_clear()
    listed = runner.invoke(backup_app, ["list", "--json"])
    assert listed.exit_code == 0
    assert [b["id"] for b in json.loads(listed.stdout)["backups"]] == [manifest["id"]]


# Consistency under load and schema migration -------------------------------------------------


def test_backup_taken_while_scoring_restores_consistent_batches(platform: Settings) -> None:
    rows_per_batch = 2_000
    # SQLite is busy while the backup reads: the scorer retries.
    manifest = backup_while_scoring(
        platform, rows_per_batch, batches=4, busy=(sa.exc.OperationalError,)
    )
    state, store = parts(platform)

    backup.restore_backup(state, store, manifest["id"], safety_backup=False)

    per_batch = batch_counts(platform)
    live = per_batch[per_batch.batch_id.str.startswith("live-")]
    assert len(live) >= 1
    assert (live.n == rows_per_batch).all() and (live.summarised == live.n).all()
    assert per_batch.n.sum() == manifest["counts"]["detection_rows"]


def test_restore_of_older_schema_runs_migrations(platform_home: Path) -> None:
    from alembic import command
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    settings = get_settings()
    platform_home.mkdir(parents=True, exist_ok=True)
    url = settings.mlflow_tracking_uri
    config = _get_alembic_config(url)
    history = [r.revision for r in ScriptDirectory.from_config(config).walk_revisions()]
    older = history[3]  # three migrations behind this MLflow's head
    engine = sa.create_engine(url)
    InitialBase.metadata.create_all(engine)  # how MLflow starts a DB before its migrations
    command.upgrade(config, older)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO experiments (name, artifact_location, lifecycle_stage) "
                "VALUES ('old', '/nowhere', 'active')"
            )
        )
    engine.dispose()
    state, store = parts(settings)
    manifest = backup.create_backup(state, store)
    assert manifest["schema"]["mlflow_alembic_revision"] == older
    backup.upgrade_mlflow_schema(url)  # the platform moved on to the current MLflow

    report = backup.restore_backup(state, store, manifest["id"])

    assert report["mlflow_schema_upgraded"] == f"{older} -> {history[0]}"
    assert report["verification"]["counts"]["experiments"] == 1
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            == (history[0])
        )
    engine.dispose()


def test_backup_from_a_newer_mlflow_is_refused(platform: Settings) -> None:
    state, store = parts(platform)
    manifest = backup.create_backup(state, store)
    manifest["schema"]["mlflow_alembic_revision"] = "ffffffffffff"
    manifest["platform"]["mlflow"] = "99.0"
    with pytest.raises(InputError, match="unknown to MLflow here"):
        backup._check_schema(manifest)
