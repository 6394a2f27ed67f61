"""The train flow in a process where other MLflow code already ran."""

from __future__ import annotations

import mlflow

from deployments.demo import LABEL, build_demo_files
from flows.train_detector import train_detector
from pynomaly.settings import get_settings


def test_training_resumes_its_run_whatever_experiment_is_active(platform_home) -> None:
    """A worker or notebook may have set another active experiment; training must not fail."""
    mlflow.set_tracking_uri(get_settings().mlflow_tracking_uri)
    mlflow.set_experiment("someone-elses-experiment")
    files = build_demo_files(platform_home / "demo")
    out = train_detector(str(files["train"]), "bc", label_column=LABEL)
    run = mlflow.get_run(out["run_id"])
    assert out["version"] == 1 and run.info.status == "FINISHED"
    assert run.data.tags["dataset_sha256"] == out["dataset_sha256"]
    assert {"roc_auc", "average_precision", "threshold"} <= set(run.data.metrics)
