"""Backup and restore time and size for 100 model versions and 1,000,000 detection rows.

Embedded defaults (SQLite MLflow and results DB, local artifact folder, local backup store).
Run: `python benchmarks/backup.py [--rows N] [--versions N]`; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd


def build(home: Path, versions: int, rows: int) -> dict[str, float]:
    """One tiny logged model registered `versions` times, `rows` detection rows in 100 batches."""
    import mlflow
    from mlflow.models import infer_signature
    from pyod.models.iforest import IForest

    from pynomaly.settings import Settings
    from registry.model import DetectorModel
    from registry.tracking import ensure_experiment
    from registry.versions import client
    from tasks.results import backfill_batches, detection_results, results_engine

    settings = Settings(home=home)
    started = time.perf_counter()
    x = pd.DataFrame(np.random.default_rng(0).normal(size=(256, 4)), columns=list("abcd"))
    model = DetectorModel(IForest(n_estimators=20, random_state=0).fit(x), 0.0, list(x.columns))
    experiment = ensure_experiment(
        "pynomaly", settings.mlflow_tracking_uri, settings.artifact_store
    )
    mlflow_client = client(settings.mlflow_tracking_uri)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)  # for the fluent logging below
    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            signature=infer_signature(x.head(5), model.predict(None, x.head(5))),
            input_example=x.head(5),
            pip_requirements=["pyod"],
        )
    mlflow_client.create_registered_model("bench")
    for _ in range(versions):
        mv = mlflow_client.create_model_version("bench", info.model_uri, run_id=run.info.run_id)
    mlflow_client.set_registered_model_alias("bench", "champion", "1")
    mlflow_client.set_registered_model_alias("bench", "challenger", mv.version)
    registry_s = time.perf_counter() - started

    started = time.perf_counter()
    engine = results_engine(settings.results_url)
    rng = np.random.default_rng(1)
    per_batch = rows // 100
    with engine.begin() as conn:
        for b in range(100):
            scores = rng.normal(size=per_batch)
            frame = pd.DataFrame(
                {
                    "batch_id": f"batch-{b:03d}",
                    "row_index": np.arange(per_batch),
                    "score": scores,
                    "is_anomaly": scores > 2.0,
                    "model_name": "bench",
                    "model_version": 1,
                    "scored_at": datetime(2026, 1, 1, tzinfo=UTC),
                }
            )
            conn.execute(detection_results.insert(), frame.to_dict("records"))
    backfill_batches(engine)  # the bulk insert above skips replace_batch's summaries
    engine.dispose()
    return {"build_registry_s": registry_s, "build_rows_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--versions", type=int, default=100)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("mlflow").setLevel(logging.ERROR)

    from flows.backup_platform import platform_state
    from pynomaly.settings import Settings
    from tasks import backup

    root = Path(tempfile.mkdtemp(prefix="pynomaly-bench-backup-"))
    try:
        home = root / "home"
        home.mkdir()
        figures: dict[str, float | int | str] = dict(build(home, args.versions, args.rows))
        settings = Settings(home=home)
        state = platform_state(settings)
        store = backup.backup_store(settings.backup_store_root)
        key = backup.backup_key(settings.backup_secret, home, store, create=True)
        live = sum(p.stat().st_size for p in home.rglob("*") if p.is_file())

        started = time.perf_counter()
        manifest = backup.create_backup(state, store, key=key)
        figures["backup_s"] = time.perf_counter() - started

        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            backup.verify_backup(store, manifest["id"], Path(tmp), key)
        figures["verify_s"] = time.perf_counter() - started

        started = time.perf_counter()
        report = backup.restore_backup(state, store, manifest["id"], key=key, safety_backup=False)
        figures["restore_s"] = time.perf_counter() - started

        started = time.perf_counter()
        backup.restore_backup(state, store, manifest["id"], key=key, safety_backup=True)
        figures["restore_with_safety_backup_s"] = time.perf_counter() - started

        started = time.perf_counter()
        backup.drill_restore(state, store, manifest["id"], key=key)
        figures["drill_s"] = time.perf_counter() - started

        figures |= {
            "model_versions": manifest["counts"]["model_versions"],
            "detection_rows": manifest["counts"]["detection_rows"],
            "live_state_bytes": live,
            "backup_bytes": manifest["size_bytes"],
            "compression_ratio": round(live / manifest["size_bytes"], 2),
            "files": ", ".join(f"{k}={v['bytes']}" for k, v in manifest["files"].items()),
            "champions_checked": report["verification"]["champions_checked"],
        }
        print(
            json.dumps(
                {k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()},
                indent=1,
            )
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
