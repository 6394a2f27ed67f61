"""Backups on embedded defaults: exact retention, round trips, refusals, consistency, migration."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import time
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
    replace_file,
    reseal_with_sha256,
    rewrite_archive,
    score_rows,
    snapshot,
    stored_manifest,
    tamper_models,
)
from typer.testing import CliRunner

from pynomaly.errors import InputError
from pynomaly.settings import Settings, get_settings
from tasks import backup
from tasks.backup.artifacts import read_json_gz, sha256_of, write_json_gz
from tasks.backup.catalog import select_retained
from tasks.backup.databases import mlflow_head_revision, upgrade_mlflow_schema
from tasks.backup.manifest import ARTIFACTS_COPY, CHAMPIONS, SIGNATURE, backup_time, write_manifest
from tasks.backup.restore import check_applicable
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
    kept = select_retained(RETENTION_TIMES, NOW, 2, 3, 3)
    # newest 2: a, b; days 11/10/9 March: a, c, e; weeks 11/10/9: a, f, h
    assert kept == {"a", "b", "c", "e", "f", "h"}


def test_retention_with_only_keep_last() -> None:
    assert select_retained(RETENTION_TIMES, NOW, 3, 0, 0) == {"a", "b", "c"}


def test_retention_daily_window_counts_today_as_first_day() -> None:
    assert select_retained(RETENTION_TIMES, NOW, 1, 1, 0) == {"a"}
    assert select_retained(RETENTION_TIMES, NOW, 1, 5, 0) == {"a", "c", "e", "f", "g"}


def test_retention_weekly_spans_year_boundary() -> None:
    times = {"x": at("2025-12-29T01:00"), "y": at("2025-12-28T01:00"), "z": at("2025-12-21T01:00")}
    # 2025-12-29 is ISO 2026-W01; 12-28 is 2025-W52; 12-21 is 2025-W51.
    assert select_retained(times, at("2026-01-02T00:00"), 1, 0, 2) == {"x", "y"}


def test_retention_keeps_everything_when_few_and_nothing_when_none() -> None:
    assert select_retained({"a": NOW}, NOW, 7, 0, 0) == {"a"}
    assert select_retained({}, NOW, 7, 14, 8) == set()


def test_backup_id_round_trips_its_time() -> None:
    made = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
    backup_id = backup.new_backup_id(made)
    assert backup_id.startswith("20260504T030201Z-")
    assert backup_time(backup_id) == made
    with pytest.raises(InputError, match="not a backup id"):
        backup_time("yesterday")


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
    state, store, key = parts(platform)
    before = snapshot(platform)
    manifest = backup.create_backup(state, store, key=key)

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
    assert manifest["schema"]["mlflow_alembic_revision"] == mlflow_head_revision()
    stored = Path(platform.backup_store_root) / manifest["id"]
    for name, info in manifest["files"].items():
        assert sha256_of(stored / name) == info["sha256"]

    # Destroy: both databases emptied, the artifact store gone.
    drop_all_tables(platform.home_dir / "mlflow.db")
    drop_all_tables(platform.home_dir / "results.db")
    shutil.rmtree(platform.artifact_store)

    report = backup.restore_backup(state, store, "latest", key=key)

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
    state, store, key = parts(platform)
    manifest = backup.create_backup(state, store, key=key)
    engine = results_engine(platform.results_url)
    score_rows(engine, "batch-after-backup", 50)  # live state moves on after the backup
    engine.dispose()
    live_before = snapshot(platform)
    live_mlflow = (platform.home_dir / "mlflow.db").read_bytes()

    report = backup.drill_restore(state, store, manifest["id"], key=key)

    assert report["verification"]["counts"]["detection_rows"] == 420  # the backup's, not live
    assert report["verification"]["champions_checked"] == 2
    assert report["artifact_locations_rewritten"] >= 3  # it loaded the scratch artifacts
    after = snapshot(platform)
    assert after["models"] == live_before["models"]
    pd.testing.assert_frame_equal(after["rows"], live_before["rows"])
    assert after["files"] == live_before["files"]
    assert (platform.home_dir / "mlflow.db").read_bytes() == live_mlflow


def test_drill_fails_when_a_champion_scores_differently(platform: Settings) -> None:
    state, store, key = parts(platform)
    manifest = backup.create_backup(state, store, key=key)
    # Rewrite the recorded scores, and re-sign with the key (so only the scoring check can
    # catch it).
    folder = Path(platform.backup_store_root) / manifest["id"]
    samples = read_json_gz(folder / CHAMPIONS)
    samples[0]["scores"][0] += 1e-9
    changed = write_json_gz(platform.home_dir / CHAMPIONS, samples)
    stored = replace_file(store, stored_manifest(store, manifest["id"]), CHAMPIONS, changed)
    write_manifest(store, stored, key)

    with pytest.raises(InputError, match="champion alpha v1 scores"):
        backup.drill_restore(state, store, manifest["id"], key=key)


# Refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_backup_is_refused_before_anything_changes(platform: Settings, damage: str) -> None:
    state, store, key = parts(platform)
    manifest = backup.create_backup(state, store, key=key)
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
        backup.restore_backup(state, store, manifest["id"], key=key)

    assert [b["id"] for b in backup.list_backups(store)] == [manifest["id"]]  # no safety copy
    pd.testing.assert_frame_equal(snapshot(platform)["rows"], live["rows"])


def test_tampered_manifest_is_refused(platform: Settings) -> None:
    state, store, key = parts(platform)
    manifest = backup.create_backup(state, store, key=key)
    path = Path(platform.backup_store_root) / manifest["id"] / backup.MANIFEST
    path.write_text(path.read_text().replace('"detection_rows": 420', '"detection_rows": 421'))
    with pytest.raises(InputError, match="signature does not match"):
        backup.verify_backup(store, manifest["id"], platform.home_dir / "check", key)


def test_cli_refuses_corrupted_backup_with_exit_2_and_one_line(platform: Settings) -> None:
    from deployments.cli.backup import backup_app

    state, store, key = parts(platform)
    manifest = backup.create_backup(state, store, key=key)
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
    state, store, key = parts(platform)

    backup.restore_backup(state, store, manifest["id"], key=key, safety_backup=False)

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
    state, store, key = parts(settings)
    manifest = backup.create_backup(state, store, key=key)
    assert manifest["schema"]["mlflow_alembic_revision"] == older
    upgrade_mlflow_schema(url)  # the platform moved on to the current MLflow

    report = backup.restore_backup(state, store, manifest["id"], key=key)

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
    state, store, key = parts(platform)
    manifest = backup.create_backup(state, store, key=key)
    manifest["schema"]["mlflow_alembic_revision"] = "ffffffffffff"
    manifest["platform"]["mlflow"] = "99.0"
    with pytest.raises(InputError, match="unknown to MLflow here"):
        check_applicable(state, manifest)


# Trust: signatures, names, formats, staging --------------------------------------------------


def one_line_refusal(result, *needles: str) -> str:
    """The CLI refused: exit 2, nothing on stdout, one line on stderr holding every needle."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert result.stdout == ""
    return lines[0]


def cli(*args: str):
    from deployments.cli.backup import backup_app

    get_settings.cache_clear()
    return CliRunner().invoke(backup_app, list(args))


@pytest.mark.parametrize("signature", ["left in place", "removed"])
def test_tampered_model_resealed_with_sha256_is_refused_and_never_unpickled(
    platform: Settings, tmp_path: Path, signature: str
) -> None:
    state, store, key = parts(platform)
    manifest = backup.create_backup(state, store, key=key)
    backup_id = manifest["id"]
    marker = tmp_path / "payload-ran"
    # Whoever can write the backup store swaps the pickled models and re-seals the manifest
    # with a recomputed manifest.sha256 (all the old scheme checked).
    tampered = tamper_models(store, backup_id, tmp_path / "attacker", marker)
    reseal_with_sha256(store, tampered)
    if signature == "removed":
        store.delete(f"{backup_id}/{SIGNATURE}")
    why = "signature does not match" if signature == "left in place" else "is not signed"
    engine = results_engine(platform.results_url)
    score_rows(engine, "batch-after-backup", 50)
    engine.dispose()
    live = snapshot(platform)

    with pytest.raises(InputError, match=why):
        backup.verify_backup(store, backup_id, tmp_path / "verify", key)
    with pytest.raises(InputError, match=why):
        backup.restore_backup(state, store, backup_id, key=key)
    with pytest.raises(InputError, match=why):
        backup.drill_restore(state, store, "latest", key=key)
    one_line_refusal(cli("verify", "latest", "--drill", "--json"), backup_id, why)
    one_line_refusal(cli("restore", backup_id, "--yes", "--json"), backup_id, why)

    assert not marker.exists()  # nothing of the backup was unpickled
    after = snapshot(platform)
    assert after["models"] == live["models"] and after["files"] == live["files"]
    pd.testing.assert_frame_equal(after["rows"], live["rows"])
    assert [b["id"] for b in backup.list_backups(store, key)] == [backup_id]  # no safety copy
    assert backup.list_backups(store, key)[0]["status"] == (
        "bad-signature" if signature == "left in place" else "unsigned"
    )

    # Control: the very same files, signed with the key, are loaded by the drill, which runs
    # the payload. So the refusals above are what kept it from running.
    write_manifest(store, tampered, key)
    with pytest.raises(InputError, match="champion alpha v1 does not load"):
        backup.drill_restore(state, store, backup_id, key=key)
    assert marker.exists()


def test_manifest_naming_a_path_outside_the_backup_is_refused(
    platform: Settings, tmp_path: Path
) -> None:
    state, store, key = parts(platform)
    manifest = backup.create_backup(state, store, key=key)
    backup_id, name = manifest["id"], "../../../tmp/x"
    planted = Path(store.uri(f"{backup_id}/{name}")).resolve()  # where the old code read it
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(b"planted")
    stored = stored_manifest(store, backup_id)
    stored["files"][name] = {"sha256": sha256_of(planted), "bytes": 7}
    write_manifest(store, stored, key)  # even signed: the name alone is refused
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    outside = (work / "staging-folder" / name).resolve()  # where the old code wrote it
    live = snapshot(platform)

    with pytest.raises(InputError, match=r"names '\.\./\.\./\.\./tmp/x', which is not a backup"):
        backup.verify_backup(store, backup_id, work / "verify", key)
    with pytest.raises(InputError, match="not a backup file"):
        backup.restore_backup(state, store, backup_id, key=key, work_dir=work)
    with pytest.raises(InputError, match="not a backup file"):
        backup.drill_restore(state, store, backup_id, key=key, work_dir=work)
    one_line_refusal(cli("verify", backup_id, "--json"), backup_id, "tmp/x")

    assert not outside.exists()
    assert list(work.iterdir()) == []  # staging folders removed on the way out
    assert snapshot(platform)["files"] == live["files"]
    assert [b["status"] for b in backup.list_backups(store, key)] == ["malformed"]


@pytest.mark.parametrize("bad", ["parent", "absolute", "backslash", "symlink"])
def test_restore_with_a_bad_artifact_member_leaves_live_databases_unchanged(
    platform: Settings, tmp_path: Path, bad: str
) -> None:
    import tarfile

    state, store, key = parts(platform)
    manifest = backup.create_backup(state, store, key=key)
    backup_id = manifest["id"]
    names = {"parent": "../escape.txt", "absolute": "/tmp/escape.txt", "backslash": "a\\b.txt"}
    member = tarfile.TarInfo(names.get(bad, "datasets/link"))
    if bad == "symlink":
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    else:
        member.size = 1
    original = store.download(f"{backup_id}/{ARTIFACTS_COPY}", tmp_path / "orig.tar.gz")
    archive = rewrite_archive(original, tmp_path / "bad.tar.gz", {}, (member,))
    stored = replace_file(store, stored_manifest(store, backup_id), ARTIFACTS_COPY, archive)
    write_manifest(store, stored, key)  # signed: only the member check can stop it
    engine = results_engine(platform.results_url)
    score_rows(engine, "batch-after-backup", 50)  # live state differs from the backup
    engine.dispose()
    live = snapshot(platform)
    live_dbs = {n: (platform.home_dir / n).read_bytes() for n in ("mlflow.db", "results.db")}
    work = tmp_path / "work"
    work.mkdir()

    with pytest.raises(InputError, match=re.escape(f"artifacts.tar.gz holds {member.name!r}")):
        backup.restore_backup(state, store, backup_id, key=key, work_dir=work)

    assert {n: (platform.home_dir / n).read_bytes() for n in live_dbs} == live_dbs
    after = snapshot(platform)
    assert after["models"] == live["models"] and after["files"] == live["files"]
    pd.testing.assert_frame_equal(after["rows"], live["rows"])
    assert list(work.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()
    assert [b["id"] for b in backup.list_backups(store, key)] == [backup_id]  # no safety copy


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("drop schema", "has no schema"),
        ("format 99", "has format 99; this Pynomaly reads formats 1, 2"),
        ("drop format", "has no format"),
    ],
)
def test_manifest_without_schema_or_with_unknown_format_is_one_line_exit_2(
    platform: Settings, change: str, message: str
) -> None:
    state, store, key = parts(platform)
    manifest = backup.create_backup(state, store, key=key, record_champions=False)
    stored = stored_manifest(store, manifest["id"])
    if change == "drop schema":
        del stored["schema"]
    elif change == "format 99":
        stored["format"] = 99
    else:
        del stored["format"]
    write_manifest(store, stored, key)  # signed: the checks themselves must refuse
    live = snapshot(platform)

    one_line_refusal(cli("verify", manifest["id"], "--json"), manifest["id"], message)
    one_line_refusal(cli("restore", manifest["id"], "--yes", "--json"), manifest["id"], message)

    pd.testing.assert_frame_equal(snapshot(platform)["rows"], live["rows"])
    (row,) = backup.list_backups(store, key)
    assert (row["status"], message in row["problem"]) == ("malformed", True)


def test_one_malformed_backup_does_not_stop_list_or_health(platform: Settings) -> None:
    from deployments.monitoring.exporter import Sources
    from deployments.monitoring.health import health_report

    state, store, key = parts(platform)
    good = backup.create_backup(state, store, key=key, record_champions=False)["id"]
    later = datetime.now(UTC) + timedelta(minutes=1)
    broken = backup.new_backup_id(later)
    store.put_bytes(f"{broken}/{backup.MANIFEST}", b'{"format": 2, "id": ')
    unsigned = backup.new_backup_id(later + timedelta(minutes=1))
    copy = stored_manifest(store, good) | {"id": unsigned}
    store.put_bytes(f"{unsigned}/{backup.MANIFEST}", json.dumps(copy).encode())

    listed = cli("list", "--json")

    assert listed.exit_code == 0, listed.output
    rows = {b["id"]: b for b in json.loads(listed.stdout)["backups"]}
    assert {i: b["status"] for i, b in rows.items()} == {
        good: "ok",
        broken: "malformed",
        unsigned: "unsigned",
    }
    assert rows[broken]["problem"] == "manifest.json is not JSON"
    assert rows[good]["counts"]["detection_rows"] == 420
    table = cli("list")
    assert table.exit_code == 0
    assert f"{broken}: malformed: manifest.json is not JSON" in table.stdout.splitlines()

    report = health_report(Sources.from_settings(platform), platform.artifact_store)
    check = report["checks"]["backups"]
    assert check["ok"] is True, check
    assert "1 backup(s)" in check["detail"]
    assert f"{broken} (malformed)" in check["detail"]
    assert f"{unsigned} (unsigned)" in check["detail"]


def test_backup_with_a_champion_that_cannot_load_succeeds_and_says_so(
    platform: Settings,
) -> None:
    from registry.versions import client

    state, store, key = parts(platform)
    location = client(platform.mlflow_tracking_uri).get_model_version_download_uri("beta", "1")
    model_files = Path(location.removeprefix("file://"))
    (model_files / "MLmodel").unlink()  # beta's champion no longer loads

    manifest = backup.create_backup(state, store, key=key)

    (warning,) = manifest["warnings"]
    assert warning.startswith("champion beta v1 does not load or score: ")
    samples = {s["model"]: s for s in read_json_gz(store_path(platform, manifest))}
    assert samples["alpha"]["sample"] is not None and samples["beta"]["sample"] is None
    (row,) = backup.list_backups(store, key)
    assert (row["status"], row["warnings"]) == ("ok", [warning])
    report = backup.drill_restore(state, store, manifest["id"], key=key)
    assert report["verification"]["champions_checked"] == 1  # alpha, the one that loads


def store_path(settings: Settings, manifest: dict) -> Path:
    return Path(settings.backup_store_root) / manifest["id"] / CHAMPIONS


def test_backup_signed_with_another_key_is_refused_by_name(
    platform: Settings, tmp_path: Path
) -> None:
    state, store, key = parts(platform)
    manifest = backup.create_backup(state, store, key=key, record_champions=False)
    other = backup.BackupKey(b"another-key-of-at-least-32-characters", "test")

    with pytest.raises(InputError, match=f"backup {manifest['id']} .*signed with another key"):
        backup.verify_backup(store, manifest["id"], tmp_path / "v", other)
    with pytest.raises(InputError, match="there is no backup key here"):
        backup.verify_backup(store, manifest["id"], tmp_path / "v", None)
    assert [b["status"] for b in backup.list_backups(store, other)] == ["bad-signature"]
    assert [b["status"] for b in backup.list_backups(store, None)] == ["unchecked"]


def test_unsigned_backup_is_restored_only_with_trust_unsigned_and_never_drilled(
    platform: Settings,
) -> None:
    state, store, key = parts(platform)
    manifest = backup.create_backup(state, store, key=key)
    backup_id = manifest["id"]
    # What a backup made before signatures looks like: format 1, manifest.sha256, no .sig.
    legacy = stored_manifest(store, backup_id)
    legacy["format"] = 1
    del legacy["warnings"]
    store.delete(f"{backup_id}/{SIGNATURE}")
    reseal_with_sha256(store, legacy)
    drop_all_tables(platform.home_dir / "results.db")

    assert [b["status"] for b in backup.list_backups(store, key)] == ["unsigned"]
    one_line_refusal(cli("restore", backup_id, "--yes", "--json"), backup_id, "--trust-unsigned")
    with pytest.raises(InputError, match="is not signed"):
        backup.drill_restore(state, store, backup_id, key=key)
    with sqlite3.connect(platform.home_dir / "results.db") as conn:  # nothing was restored
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)

    restored = cli("restore", backup_id, "--yes", "--trust-unsigned", "--json")

    assert restored.exit_code == 0, restored.output
    report = json.loads(restored.stdout)
    assert report["signed"] is False and report["verification"]["problems"] == []
    assert report["verification"]["counts"]["detection_rows"] == 420
    # A damaged legacy manifest is still caught by its sha256.
    path = Path(platform.backup_store_root) / backup_id / backup.MANIFEST
    path.write_text(path.read_text().replace('"detection_rows": 420', '"detection_rows": 421'))
    with pytest.raises(InputError, match="manifest.json does not match manifest.sha256"):
        backup.restore_backup(state, store, backup_id, key=key, trust_unsigned=True)


# Key handling --------------------------------------------------------------------------------


def test_key_file_is_made_once_0600_and_reused(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0)  # even with a permissive umask the file is never readable by others
    try:
        made = backup.load_backup_key(None, tmp_path / "home" / "backup.key", create=True)
    finally:
        os.umask(old)
    path = tmp_path / "home" / "backup.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = backup.load_backup_key(None, path, create=False)
    assert again is not None and again.secret == made.secret
    assert [p.name for p in path.parent.iterdir()] == ["backup.key"]  # no temp file left
    assert made.secret.decode() not in repr(made)
    assert backup.load_backup_key(None, tmp_path / "none.key", create=False) is None


def test_key_refusals(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="PYNOMALY_BACKUP_KEY is shorter than 32"):
        backup.load_backup_key("short", None)
    env = backup.load_backup_key("x" * 40, tmp_path / "unused.key", create=True)
    assert env.source == "PYNOMALY_BACKUP_KEY" and not (tmp_path / "unused.key").exists()
    with pytest.raises(InputError, match="S3 store .* set PYNOMALY_BACKUP_KEY"):
        backup.load_backup_key(None, None, create=True)
    assert backup.load_backup_key(None, None) is None
    shared = tmp_path / "shared.key"
    shared.write_text("y" * 64)
    shared.chmod(0o644)
    with pytest.raises(InputError, match="readable by others"):
        backup.load_backup_key(None, shared)


def test_key_file_inside_the_backup_store_is_refused(platform_home: Path) -> None:
    settings = get_settings()
    store = backup.backup_store(str(platform_home))  # the store is the home itself
    with pytest.raises(InputError, match="inside the backup store"):
        backup.backup_key(settings.backup_secret, settings.home_dir, store, create=True)
    assert not (platform_home / backup.KEY_FILE).exists()


def test_process_alive_counts_zombies_and_ended_processes_as_gone() -> None:
    import subprocess

    from tasks.staging import process_alive

    assert process_alive(os.getpid())
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while process_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # exited but not reaped: a zombie, already gone
    assert not process_alive(child.pid)
    child.wait()
    assert not process_alive(child.pid)
