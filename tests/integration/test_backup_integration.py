"""Backups on PostgreSQL + S3 (moto): round trip after dropping everything, versioned buckets,
encryption, refusal of damaged backups, pruning in S3, scratch drills, backups under load."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import backup_state
import pandas as pd
import pytest
import sqlalchemy as sa

from pynomaly.errors import InputError
from pynomaly.settings import Settings, get_settings
from tasks import backup
from tasks.results import results_engine
from tasks.store import ArtifactStore, s3_client, split_s3_uri

pytestmark = pytest.mark.integration


@pytest.fixture
def platform(pg_server: Any, s3_endpoint: str, s3_bucket: str, tmp_path, monkeypatch) -> Settings:
    """Settings on PostgreSQL (MLflow, results, Optuna) and S3 (artifacts, backups)."""
    token = uuid.uuid4().hex[:8]
    urls = {role: pg_server.create_database(f"{role}_{token}") for role in ("mlflow", "res", "opt")}
    backups = f"backups-{token}"
    s3_client(s3_endpoint).create_bucket(Bucket=backups)
    env = {
        "PYNOMALY_HOME": str(tmp_path / "home"),
        "PYNOMALY_TRACKING_URI": urls["mlflow"],
        "PYNOMALY_RESULTS_DB_URL": urls["res"],
        "PYNOMALY_OPTUNA_STORAGE": urls["opt"],
        "PYNOMALY_ARTIFACT_ROOT": f"s3://{s3_bucket}/artifacts",
        "PYNOMALY_BACKUP_ROOT": f"s3://{backups}/platform",
        "PYNOMALY_S3_ENDPOINT_URL": s3_endpoint,
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        # Dropping a database kills its connections; unpooled MLflow sessions reconnect.
        "MLFLOW_SQLALCHEMYSTORE_POOLCLASS": "NullPool",
        # An S3 backup store is signed with a key from the environment (a secret store's).
        "PYNOMALY_BACKUP_KEY": uuid.uuid4().hex + uuid.uuid4().hex,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()
    for role in ("mlflow", "res", "opt"):
        pg_server.drop_database(f"{role}_{token}")


def build_state(settings: Settings) -> None:
    """The shared tiny state with larger batches, plus an Optuna study."""
    import optuna

    backup_state.build_state(settings, batch_rows=(3_000, 700))
    study = optuna.create_study(study_name="tune-alpha", storage=settings.optuna_storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=4)


def snapshot(settings: Settings) -> dict[str, Any]:
    """What a restore must bring back, comparable: the shared snapshot and the Optuna trials."""
    import optuna

    trials = optuna.load_study(study_name="tune-alpha", storage=settings.optuna_storage).trials
    return backup_state.snapshot(settings) | {
        "trials": [(t.number, t.params, t.value) for t in trials]
    }


def destroy(settings: Settings, pg_server: Any) -> None:
    """Drop every database and delete every artifact object."""
    for url in (settings.mlflow_tracking_uri, settings.results_url, settings.optuna_storage):
        pg_server.drop_database(sa.make_url(url).database)
    store = ArtifactStore(settings.artifact_store, settings.s3_endpoint_url)
    for key in store.list():
        store.delete(key)
    assert store.list() == []


def drill_databases(pg_server: Any) -> list[str]:
    engine = sa.create_engine(pg_server.database_url(), poolclass=sa.NullPool)
    with engine.connect() as conn:
        names = [r[0] for r in conn.execute(sa.text("SELECT datname FROM pg_database"))]
    engine.dispose()
    return [n for n in names if "_drill_" in n]


def test_postgres_s3_backup_drill_destroy_restore_is_identical(
    platform: Settings, pg_server: Any
) -> None:
    build_state(platform)
    state, store, key = backup_state.parts(platform)
    before = snapshot(platform)

    manifest = backup.create_backup(state, store, key=key)

    assert manifest["artifacts"]["mode"] == "copy"  # the bucket is not versioned
    taken = {role: i["kind"] for role, i in manifest["databases"].items() if not i.get("absent")}
    assert taken == {"mlflow": "postgresql", "results": "postgresql", "optuna": "postgresql"}
    assert sorted(manifest["files"]) == [
        "artifacts.tar.gz",
        "champions.json.gz",
        "expectations.tar.gz",
        "mlflow.pgdump",
        "optuna.pgdump",
        "results.pgdump",
    ]
    counts = manifest["counts"]
    assert (counts["registered_models"], counts["model_versions"], counts["aliases"]) == (2, 3, 3)
    assert (counts["detection_rows"], counts["optuna_trials"]) == (3_700, 4)
    assert counts["artifacts"] == len(before["files"])
    assert "password" not in str(manifest) and pg_server.password not in str(manifest)
    # Every backup object is encrypted at rest.
    bucket, prefix = split_s3_uri(store.uri(manifest["id"]))
    client = s3_client(platform.s3_endpoint_url)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
    assert len(keys) == len(manifest["files"]) + 2  # + manifest.json and manifest.sig
    for object_key in keys:
        head = client.head_object(Bucket=bucket, Key=object_key)
        assert head["ServerSideEncryption"] == "AES256"

    drill = backup.drill_restore(state, store, "latest", key=key)
    assert drill["verification"]["champions_checked"] == 2
    assert drill_databases(pg_server) == []  # scratch databases dropped
    assert snapshot(platform)["models"] == before["models"]

    destroy(platform, pg_server)
    report = backup.restore_backup(state, store, manifest["id"], key=key)

    after = snapshot(platform)
    assert after["models"] == before["models"]
    pd.testing.assert_frame_equal(after["rows"], before["rows"])
    assert after["files"] == before["files"]
    assert after["trials"] == before["trials"]
    assert report["verification"]["champions_checked"] == 2
    assert sorted(report["databases"]) == ["mlflow", "optuna", "results"]


def test_versioned_bucket_is_listed_and_restored_by_version(
    platform: Settings, pg_server: Any, s3_bucket: str
) -> None:
    client = s3_client(platform.s3_endpoint_url)
    client.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    build_state(platform)
    state, store, key = backup_state.parts(platform)
    before = snapshot(platform)

    manifest = backup.create_backup(state, store, key=key)
    assert manifest["artifacts"]["mode"] == "listing"
    assert "artifacts-listing.json.gz" in manifest["files"]
    assert "artifacts.tar.gz" not in manifest["files"]

    # Overwrite one object, then delete everything (delete markers) and drop the databases.
    artifacts = ArtifactStore(platform.artifact_store, platform.s3_endpoint_url)
    artifacts.put_bytes("datasets/alpha/abc.parquet", b"changed after the backup")
    destroy(platform, pg_server)
    drill = backup.drill_restore(state, store, manifest["id"], key=key)  # reads old versions only
    assert drill["verification"]["champions_checked"] == 2

    report = backup.restore_backup(state, store, manifest["id"], key=key)

    assert report["artifact_versions_restored"] == len(before["files"])
    after = snapshot(platform)
    assert after["files"] == before["files"]
    assert after["models"] == before["models"]
    pd.testing.assert_frame_equal(after["rows"], before["rows"])


def test_damaged_backup_in_s3_is_refused(platform: Settings) -> None:
    build_state(platform)
    state, store, key = backup_state.parts(platform)
    manifest = backup.create_backup(state, store, key=key, record_champions=False)
    victim = f"{manifest['id']}/mlflow.pgdump"
    store.put_bytes(victim, store.get_bytes(victim)[:-100])
    engine = results_engine(platform.results_url)
    backup_state.score_rows(engine, "after-backup", 10)
    engine.dispose()

    with pytest.raises(InputError, match=r"mlflow\.pgdump is corrupted"):
        backup.restore_backup(state, store, manifest["id"], key=key)

    assert [b["id"] for b in backup.list_backups(store)] == [manifest["id"]]
    engine = sa.create_engine(platform.results_url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM detection_results")).scalar() == 3_710
    engine.dispose()


def test_prune_in_s3_deletes_exactly_the_dropped_backups(platform: Settings) -> None:
    store = backup.backup_store(platform.backup_store_root, platform.s3_endpoint_url)
    now = datetime(2026, 3, 11, 12, tzinfo=UTC)
    made = [now - timedelta(hours=10 * k) for k in range(12)]  # every 10 h back 4.6 days
    ids = [backup.new_backup_id(t) for t in made]
    for backup_id in ids:
        store.put_bytes(f"{backup_id}/{backup.MANIFEST}", b"{}")
        store.put_bytes(f"{backup_id}/results.pgdump", b"x")

    result = backup.prune_backups(
        store, keep_last=2, keep_daily_days=3, keep_weekly_weeks=0, now=now
    )

    # newest two (k=0, 1) + newest of 11 Mar (k=0), 10 Mar (k=2: 16:00), 9 Mar (k=4: 20:00)
    kept = {ids[0], ids[1], ids[2], ids[4]}
    assert set(result["kept"]) == kept
    assert {k.split("/")[0] for k in store.list()} == kept
    assert len(store.list()) == 2 * len(kept)


def test_backup_during_postgres_scoring_restores_whole_batches(
    platform: Settings, pg_server: Any
) -> None:
    rows_per_batch = 20_000
    manifest = backup_state.backup_while_scoring(platform, rows_per_batch, batches=3)
    state, store, key = backup_state.parts(platform)

    backup.restore_backup(state, store, manifest["id"], key=key, safety_backup=False)

    per_batch = backup_state.batch_counts(platform)
    assert len(per_batch) >= 1
    assert (per_batch.n == rows_per_batch).all() and (per_batch.summarised == per_batch.n).all()
    assert per_batch.n.sum() == manifest["counts"]["detection_rows"]


def test_tampered_backup_in_s3_is_refused_and_its_payload_never_runs(
    platform: Settings, tmp_path
) -> None:
    build_state(platform)
    state, store, key = backup_state.parts(platform)
    manifest = backup.create_backup(state, store, key=key)
    marker = tmp_path / "payload-ran"
    tampered = backup_state.tamper_models(store, manifest["id"], tmp_path / "attacker", marker)
    backup_state.reseal_with_sha256(store, tampered)
    engine = results_engine(platform.results_url)
    backup_state.score_rows(engine, "after-backup", 10)
    engine.dispose()
    live = snapshot(platform)

    for attempt in (
        lambda: backup.verify_backup(store, manifest["id"], tmp_path / "verify", key),
        lambda: backup.restore_backup(state, store, manifest["id"], key=key),
        lambda: backup.drill_restore(state, store, "latest", key=key),
    ):
        with pytest.raises(InputError, match=f"backup {manifest['id']} .*signature does not"):
            attempt()

    assert not marker.exists()
    after = snapshot(platform)
    assert after["models"] == live["models"] and after["trials"] == live["trials"]
    pd.testing.assert_frame_equal(after["rows"], live["rows"])
    assert [(b["id"], b["status"]) for b in backup.list_backups(store, key)] == [
        (manifest["id"], "bad-signature")
    ]


def test_s3_backups_need_the_key_from_the_environment(
    platform: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = backup.backup_store(platform.backup_store_root, platform.s3_endpoint_url)
    monkeypatch.delenv("PYNOMALY_BACKUP_KEY")
    with pytest.raises(InputError, match="set PYNOMALY_BACKUP_KEY"):
        backup.backup_key(Settings().backup_secret, platform.home_dir, store, create=True)
    assert not (platform.home_dir / backup.KEY_FILE).exists()  # never a key file for S3
