"""The spine on production parts: PostgreSQL results and MLflow stores, S3 snapshots and
artifacts (moto's server speaking the real S3 API), a real MLflow tracking server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from deployments.demo import LABEL, build_demo_files
from pynomaly.errors import InputError
from pynomaly.settings import get_settings
from tasks.ingest import snapshot_source
from tasks.results import batch_counts, replace_batch, results_engine
from tasks.store import ArtifactStore

pytestmark = pytest.mark.integration


def scored(n: int, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, n, size):
        idx = np.arange(start, min(n, start + size))
        yield pd.DataFrame({"row_index": idx, "score": idx * 0.5, "is_anomaly": idx % 4 == 0})


@pytest.mark.parametrize("driver", ["postgresql+psycopg2", "postgresql"])
def test_results_on_postgres_use_copy_and_replace_batches(pg_url: str, driver: str) -> None:
    # Plain postgresql:// is psycopg 3 under SQLAlchemy 2.1; both drivers must COPY.
    engine = results_engine(driver + pg_url[pg_url.index("://") :])
    now = datetime.now(UTC)
    kwargs = {"model_name": "m", "model_version": 1, "scored_at": now}
    assert replace_batch(engine, "b", scored(30_000, 7_000), **kwargs) == 30_000
    assert replace_batch(engine, "b", scored(30_000, 10_000), **kwargs) == 30_000
    assert batch_counts(engine, "b", model_name="m", model_version=1) == (30_000, 7_500)

    def failing() -> Iterator[pd.DataFrame]:
        yield from scored(100, 50)
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        replace_batch(engine, "b", failing(), **kwargs)
    assert batch_counts(engine, "b", model_name="m", model_version=1) == (30_000, 7_500)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT scored_at FROM detection_results LIMIT 1")).scalar()
        summary = conn.execute(
            sa.text("SELECT batch_id, row_count, anomaly_count FROM detection_batches")
        ).all()
    assert stored.tzinfo is not None
    assert [tuple(r) for r in summary] == [("b", 30_000, 7_500)]
    engine.dispose()


def test_ingest_from_s3_objects_and_postgres_tables(
    s3_endpoint: str, s3_bucket: str, pg_url: str, tmp_path: Path
) -> None:
    frame = pd.DataFrame({"x": np.arange(50.0), "kind": ["a", "b"] * 25})
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.upload_file(str(tmp_path / "d.csv"), s3_bucket, "in/d.csv")
    s3.upload_file(str(tmp_path / "d.parquet"), s3_bucket, "in/d.parquet")
    engine = sa.create_engine(pg_url)
    frame.to_sql("readings", engine, index=False)
    engine.dispose()

    store = ArtifactStore(f"s3://{s3_bucket}/pynomaly", s3_endpoint)
    from_csv = snapshot_source(f"s3://{s3_bucket}/in/d.csv", "d", store)
    from_parquet = snapshot_source(f"s3://{s3_bucket}/in/d.parquet", "d", store)
    from_table = snapshot_source(pg_url, "d", store, query="readings", chunk_rows=16)
    assert from_csv.sha256 == from_parquet.sha256 == from_table.sha256
    assert store.list("datasets/d") == [
        f"datasets/d/{from_csv.sha256}.json",
        f"datasets/d/{from_csv.sha256}.parquet",
    ]
    with pytest.raises(InputError, match="no such S3 object"):
        snapshot_source(f"s3://{s3_bucket}/in/missing.csv", "d", store)
    with pytest.raises(InputError, match="SQL error"):
        snapshot_source(pg_url, "d", store, query="SELECT nope FROM readings")


def run_pipeline_twice(home: Path, batch_id: str) -> tuple[dict, dict]:
    from flows.run_pipeline import pipeline
    from flows.score_batch import score_batch

    files = build_demo_files(home / "demo")
    trained = pipeline(
        str(files["train"]),
        "bc",
        score_source=str(files["batch"]),
        label_column=LABEL,
        batch_id=batch_id,
    )
    again = score_batch(str(files["batch"]), "bc@champion", batch_id=batch_id)
    return trained, again


@pytest.fixture
def production_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> Iterator[dict[str, str]]:
    monkeypatch.setenv("PYNOMALY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PYNOMALY_ARTIFACT_ROOT", f"s3://{s3_bucket}/pynomaly")
    monkeypatch.setenv("PYNOMALY_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("PYNOMALY_EXPERIMENT", f"it-{s3_bucket}")
    get_settings.cache_clear()
    yield {"bucket": s3_bucket, "home": str(tmp_path / "home")}
    get_settings.cache_clear()


def test_pipeline_on_postgres_backend_store_and_s3_artifacts(
    prefect_harness: None, production_env: dict, pg_server, monkeypatch
) -> None:
    mlflow_db = pg_server.create_database(f"mlflow_{production_env['bucket'][-8:]}")
    results_db = pg_server.create_database(f"results_{production_env['bucket'][-8:]}")
    monkeypatch.setenv("PYNOMALY_TRACKING_URI", mlflow_db.replace("+psycopg2", ""))
    monkeypatch.setenv("PYNOMALY_RESULTS_DB_URL", results_db)
    get_settings.cache_clear()

    trained, again = run_pipeline_twice(Path(production_env["home"]), "pg-batch")
    assert trained["version"] == 1 and trained["alias"] == "champion"
    assert trained["metrics"]["roc_auc"] > 0.8
    assert again["rows_scored"] == trained["rows_scored"] > 0
    engine = sa.create_engine(results_db)
    counts = batch_counts(engine, "pg-batch", model_name="bc", model_version=again["version"])
    assert counts == (trained["rows_scored"], trained["anomalies"])
    engine.dispose()
    keys = ArtifactStore(
        f"s3://{production_env['bucket']}/pynomaly", get_settings().s3_endpoint_url
    )
    listed = keys.list()
    assert any(k.startswith("datasets/bc/") for k in listed)
    assert any(k.startswith("expectations/bc.json") for k in listed)
    assert any(k.startswith("mlflow/") and k.endswith("MLmodel") for k in listed)


def test_pipeline_against_an_mlflow_tracking_server(
    prefect_harness: None, production_env: dict, mlflow_server: str, pg_url: str, monkeypatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.setenv("PYNOMALY_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("PYNOMALY_RESULTS_DB_URL", pg_url)
    get_settings.cache_clear()
    name = f"bc-{production_env['bucket'][-6:]}"
    from flows.run_pipeline import pipeline

    files = build_demo_files(Path(production_env["home"]) / "demo")
    out = pipeline(str(files["train"]), name, score_source=str(files["batch"]), label_column=LABEL)
    client = MlflowClient(mlflow_server)
    champion = client.get_model_version_by_alias(name, "champion")
    assert int(champion.version) == out["version"]
    assert champion.tags["dataset_sha256"] == out["dataset_sha256"]
    # The server proxies artifacts: the model loads back through it and scores.
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    batch = pd.read_csv(files["batch"])
    predictions = model.predict(batch)
    assert list(predictions.columns) == ["score", "is_anomaly"]
    assert int(predictions["is_anomaly"].sum()) == out["anomalies"]
