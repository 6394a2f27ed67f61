"""Tiny platform state for the backup tests, built directly (no demo run), and what they compare.

Shared by tests/unit/test_backup.py (SQLite and a local folder) and
tests/integration/test_backup_integration.py (PostgreSQL and S3): the same code serves both,
through the settings each one makes.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from flows.backup_platform import platform_state
from pynomaly.settings import Settings
from tasks import backup
from tasks.backup.artifacts import sha256_of
from tasks.backup.manifest import ARTIFACTS_COPY, MANIFEST_SUM
from tasks.results import detection_results, replace_batch, results_engine
from tasks.store import ArtifactStore

FEATURES = ["a", "b", "c"]


def log_versions(settings: Settings, name: str, versions: int) -> None:
    """Register `versions` small IForest detectors as versions of `name`."""
    import mlflow
    from mlflow.models import infer_signature
    from pyod.models.iforest import IForest

    from registry.model import DetectorModel
    from registry.tracking import ensure_experiment
    from registry.versions import client, register_version

    tracking = settings.mlflow_tracking_uri
    experiment = ensure_experiment("pynomaly", tracking, settings.artifact_store)
    mlflow.set_tracking_uri(tracking)  # for the fluent logging below
    mlflow_client = client(tracking)
    x = pd.DataFrame(np.random.default_rng(7).normal(size=(64, 3)), columns=FEATURES)
    for seed in range(versions):
        model = DetectorModel(IForest(n_estimators=10, random_state=seed).fit(x), 0.0, FEATURES)
        example = x.head(5)
        with mlflow.start_run(experiment_id=experiment) as run:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=model,
                signature=infer_signature(example, model.predict(None, example)),
                input_example=example,
                pip_requirements=["pyod"],  # skips MLflow's slow requirement inference
            )
        register_version(mlflow_client, info.model_uri, name, run.info.run_id, tags={})


def score_rows(engine: sa.Engine, batch: str, rows: int, version: int = 1) -> None:
    """Write one batch of `rows` detection rows."""
    idx = np.arange(rows)
    frame = pd.DataFrame({"row_index": idx, "score": idx / rows, "is_anomaly": idx % 10 == 0})
    replace_batch(
        engine,
        batch,
        [frame],
        model_name="alpha",
        model_version=version,
        scored_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def build_state(settings: Settings, batch_rows: tuple[int, int]) -> None:
    """Two models (alpha: champion + challenger, beta: champion), two scored batches of
    `batch_rows` rows, a suite and a dataset in the artifact store."""
    log_versions(settings, "alpha", 2)
    log_versions(settings, "beta", 1)
    engine = results_engine(settings.results_url)
    score_rows(engine, "batch-1", batch_rows[0])
    score_rows(engine, "batch-2", batch_rows[1])
    engine.dispose()
    store = ArtifactStore(settings.artifact_store, settings.s3_endpoint_url)
    store.put_bytes("expectations/alpha.json", b'{"name": "alpha"}')
    store.put_bytes("datasets/alpha/abc.parquet", b"bytes standing in for a snapshot")


def parts(
    settings: Settings,
) -> tuple[backup.PlatformState, ArtifactStore, backup.BackupKey]:
    """The platform state, the backup store the settings name, and its signing key."""
    store = backup.backup_store(settings.backup_store_root, settings.s3_endpoint_url)
    key = backup.backup_key(settings.backup_secret, settings.home_dir, store, create=True)
    return platform_state(settings), store, key


def stored_manifest(store: ArtifactStore, backup_id: str) -> dict[str, Any]:
    """A backup's manifest as stored (no checks): what an attacker or a test edits."""
    return json.loads(store.get_bytes(f"{backup_id}/{backup.MANIFEST}"))


def replace_file(
    store: ArtifactStore, manifest: dict[str, Any], name: str, path: Path
) -> dict[str, Any]:
    """Put `path` in place of a backup's file and record its sha256 and size in `manifest`
    (what whoever can write the backup store can do; signing is left to the caller)."""
    store.put_file(f"{manifest['id']}/{name}", path)
    manifest["files"][name] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    return manifest


def reseal_with_sha256(store: ArtifactStore, manifest: dict[str, Any]) -> None:
    """Write a changed manifest with a recomputed manifest.sha256 (the old scheme's seal),
    leaving whatever signature is there."""
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    store.put_bytes(f"{manifest['id']}/{MANIFEST_SUM}", hashlib.sha256(body).hexdigest().encode())
    store.put_bytes(f"{manifest['id']}/{backup.MANIFEST}", body)


def rewrite_archive(
    src: Path, dest: Path, replace: dict[str, bytes], extra: tuple[tarfile.TarInfo, ...] = ()
) -> Path:
    """Copy a backup's tar.gz with some members' content replaced and `extra` members added."""
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dest, "w:gz") as tout:
        for member in tin.getmembers():
            if member.name in replace:
                member.size = len(replace[member.name])
                tout.addfile(member, io.BytesIO(replace[member.name]))
            else:
                tout.addfile(member, tin.extractfile(member) if member.isfile() else None)
        for info in extra:
            tout.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return dest


def snapshot(settings: Settings) -> dict[str, Any]:
    """Everything a restore must bring back (models, detection rows, artifacts), comparable."""
    from registry.versions import aliases_of, client

    mlflow_client = client(settings.mlflow_tracking_uri)
    models = {}
    for rm in mlflow_client.search_registered_models():
        versions = mlflow_client.search_model_versions(f"name='{rm.name}'")
        models[rm.name] = {
            "aliases": aliases_of(mlflow_client, rm.name),
            "versions": sorted((int(v.version), v.run_id, v.source) for v in versions),
        }
    # Unpooled: a restore may drop the database under a pooled connection.
    engine = sa.create_engine(settings.results_url, poolclass=sa.NullPool)
    rows = pd.read_sql(detection_results.select(), engine).sort_values(["batch_id", "row_index"])
    engine.dispose()
    store = ArtifactStore(settings.artifact_store, settings.s3_endpoint_url)
    files = {k: hashlib.sha256(store.get_bytes(k)).hexdigest() for k in store.list()}
    return {"models": models, "rows": rows.reset_index(drop=True), "files": files}


def backup_while_scoring(
    settings: Settings,
    rows_per_batch: int,
    batches: int,
    busy: tuple[type[Exception], ...] = (),
) -> dict[str, Any]:
    """Take a backup while a thread keeps rewriting `batches` live batches; return its manifest.

    A write failing with a `busy` error (SQLite locked while the backup reads) is retried; any
    other failure fails the test. Asserts that scoring ran during the backup and after it.
    """
    state, store, key = parts(settings)
    engine = results_engine(settings.results_url)
    stop = threading.Event()
    writes: list[float] = []
    failures: list[BaseException] = []

    def keep_scoring() -> None:
        written = 0
        while not stop.is_set():
            written += 1
            # Each round re-scores every live batch with the other of two versions: a write
            # replaces the rows that version wrote two rounds before.
            version = 1 + (written // batches) % 2
            try:
                score_rows(engine, f"live-{written % batches}", rows_per_batch, version=version)
            except busy:
                time.sleep(0.01)
                continue
            except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
                failures.append(exc)
                return
            writes.append(time.monotonic())

    writer = threading.Thread(target=keep_scoring)
    writer.start()
    try:
        while len(writes) < 3 and not failures:
            time.sleep(0.01)
        started = time.monotonic()
        manifest = backup.create_backup(state, store, key=key, record_champions=False)
        finished = time.monotonic()
        while not failures and not any(w > finished for w in writes):
            time.sleep(0.01)
    finally:
        stop.set()
        writer.join()
        engine.dispose()
    assert not failures
    assert any(started < w < finished for w in writes), "no scoring ran during the backup"
    return manifest


def batch_counts(settings: Settings) -> pd.DataFrame:
    """Rows (n) of every batch and model version in detection_results, and the row count of
    its summary in detection_batches (summarised; NaN when it has none)."""
    engine = sa.create_engine(settings.results_url, poolclass=sa.NullPool)
    per_batch = pd.read_sql(
        "SELECT r.batch_id, r.model_name, r.model_version, count(*) AS n, "
        "min(b.row_count) AS summarised FROM detection_results r LEFT JOIN detection_batches b "
        "ON b.batch_id = r.batch_id AND b.model_name = r.model_name "
        "AND b.model_version = r.model_version "
        "GROUP BY r.batch_id, r.model_name, r.model_version",
        engine,
    )
    engine.dispose()
    return per_batch


class _MakesMarker:
    """Unpickling this creates a folder: stands in for any code a tampered pickle would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        import os

        return (os.mkdir, (self.marker,))


def tamper_models(store: ArtifactStore, backup_id: str, work: Path, marker: Path) -> dict[str, Any]:
    """Swap every python_model.pkl in a backup's artifact copy for a pickle that creates
    `marker` when loaded; the stored manifest with the new file's sha256 (not yet written)."""
    import pickle

    work.mkdir(parents=True, exist_ok=True)
    src = store.download(f"{backup_id}/{ARTIFACTS_COPY}", work / "original.tar.gz")
    with tarfile.open(src, "r:gz") as tar:
        models = [m.name for m in tar.getmembers() if m.name.endswith("/python_model.pkl")]
    assert models, "the backup holds no pickled model to tamper with"
    payload = pickle.dumps(_MakesMarker(marker))
    evil = rewrite_archive(src, work / "tampered.tar.gz", dict.fromkeys(models, payload))
    return replace_file(store, stored_manifest(store, backup_id), ARTIFACTS_COPY, evil)
