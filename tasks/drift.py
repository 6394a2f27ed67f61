"""Drift of a new batch against the training snapshot: per-column (Evidently) and of the scores.

Evidently is imported inside the functions: it takes seconds to import.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pynomaly.errors import InputError

PSI_BINS = 10
# PSI >= 0.2 is the usual "significant shift" rule of thumb for score distributions.
PSI_THRESHOLD = 0.2
KS_PVALUE = 0.01


@dataclass
class DriftResult:
    """Column drift from Evidently plus drift of the model's score distribution."""

    drift_detected: bool
    drift_share: float
    drift_threshold: float
    drifted_columns: int
    columns: dict[str, dict[str, Any]]
    score_drift: dict[str, Any] = field(default_factory=dict)
    reference_rows: int = 0
    current_rows: int = 0
    # Rows compared: all of them, or a uniform sample of each side of larger data.
    reference_sample_rows: int = 0
    current_sample_rows: int = 0


def _definition(frame: pd.DataFrame, columns: list[str]) -> Any:
    from evidently import DataDefinition

    numeric = [c for c in columns if pd.api.types.is_numeric_dtype(frame[c])]
    categorical = [c for c in columns if c not in numeric]
    return DataDefinition(numerical_columns=numeric, categorical_columns=categorical)


def column_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str],
    drift_share: float,
) -> tuple[dict[str, dict[str, Any]], float, int, str]:
    """Per-column drift, share and count of drifted columns, and the HTML report (Evidently)."""
    from evidently import Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = _definition(reference, columns)
    report = Report([DataDriftPreset(columns=columns, drift_share=drift_share)], include_tests=True)
    snapshot = report.run(
        Dataset.from_pandas(current[columns].reset_index(drop=True), data_definition=definition),
        Dataset.from_pandas(reference[columns].reset_index(drop=True), data_definition=definition),
    )
    data = snapshot.dict()
    # Read by metric type and column name, never by position.
    results: dict[str, dict[str, Any]] = {}
    share, count = None, None
    for metric in data["metrics"]:
        config = metric.get("config", {})
        kind = str(config.get("type", ""))
        if kind.endswith(":ValueDrift"):
            results[config["column"]] = {
                "method": config.get("method"),
                "threshold": config.get("threshold"),
                "score": float(metric["value"]),
            }
        elif kind.endswith(":DriftedColumnsCount"):
            share, count = float(metric["value"]["share"]), int(metric["value"]["count"])
    for test in data.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if str(params.get("type", "")).endswith(":ValueDrift") and params.get("column") in results:
            results[params["column"]]["drifted"] = test.get("status") == "FAIL"
    for result in results.values():
        if "drifted" not in result:  # no test result: apply Evidently's own rule to the score
            p_value = "p_value" in str(result["method"])
            limit = float(result["threshold"])
            result["drifted"] = result["score"] < limit if p_value else result["score"] >= limit
    if share is None or count is None:
        raise RuntimeError("Evidently's report has no DriftedColumnsCount metric")
    return results, share, count, snapshot.get_html_str(as_iframe=False)


def rows_compared(result: dict[str, Any]) -> str:
    """One line on the rows a drift result compared: all of each side, or a sample of it."""

    def side(name: str, rows: int, sample: int) -> str:
        return f"{name} {sample:,} of {rows:,} (sampled)" if sample < rows else f"{name} {rows:,}"

    return (
        side("training", result["reference_rows"], result["reference_sample_rows"])
        + ", "
        + side("batch", result["current_rows"], result["current_sample_rows"])
    )


def population_stability(reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> float:
    """PSI of two score samples over quantile bins of the reference."""
    reference = np.asarray(reference, float)
    current = np.asarray(current, float)
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        return 0.0 if np.allclose(current, reference[0]) else float("inf")
    edges[0], edges[-1] = -np.inf, np.inf
    ref_share = np.histogram(reference, edges)[0] / len(reference)
    cur_share = np.histogram(current, edges)[0] / len(current)
    eps = 1e-4  # empty bins would make the log infinite
    ref_share, cur_share = np.clip(ref_share, eps, None), np.clip(cur_share, eps, None)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def score_drift(
    reference_scores: np.ndarray,
    current_scores: np.ndarray,
    threshold: float | None = None,
    psi_threshold: float = PSI_THRESHOLD,
) -> dict[str, Any]:
    """KS test and PSI of the champion's scores on the training snapshot vs the batch."""
    from scipy.stats import ks_2samp

    ks = ks_2samp(reference_scores, current_scores)
    psi = population_stability(reference_scores, current_scores)
    out: dict[str, Any] = {
        "ks_statistic": float(ks.statistic),
        "ks_pvalue": float(ks.pvalue),
        "psi": psi,
        "psi_threshold": psi_threshold,
        "drifted": bool(psi >= psi_threshold and ks.pvalue < KS_PVALUE),
    }
    if threshold is not None:
        out["reference_alert_rate"] = float((np.asarray(reference_scores) > threshold).mean())
        out["current_alert_rate"] = float((np.asarray(current_scores) > threshold).mean())
    return out


def detect_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str],
    *,
    drift_threshold: float,
    reference_scores: np.ndarray | None = None,
    current_scores: np.ndarray | None = None,
    score_threshold: float | None = None,
) -> tuple[DriftResult, str]:
    """Column and score drift of a batch; drift is detected when either crosses its threshold."""
    results, share, count, html = column_drift(reference, current, columns, drift_threshold)
    scores: dict[str, Any] = {}
    if reference_scores is not None and current_scores is not None:
        scores = score_drift(reference_scores, current_scores, score_threshold)
    return (
        DriftResult(
            drift_detected=share >= drift_threshold or bool(scores.get("drifted")),
            drift_share=share,
            drift_threshold=drift_threshold,
            drifted_columns=count,
            columns=results,
            score_drift=scores,
            reference_rows=len(reference),
            current_rows=len(current),
            reference_sample_rows=len(reference),
            current_sample_rows=len(current),
        ),
        html,
    )


def compare_with_training_data(
    store: Any,
    resolved: Any,
    batch: Any,
    drift_threshold: float,
    tracking_uri: str,
    sample_rows: int,
    chunk_rows: int,
) -> tuple[dict[str, Any], str]:
    """Evidently column drift and the champion's score drift, training snapshot vs batch: each
    side all its rows, or a uniform sample of `sample_rows` read chunk by chunk. Evidently's
    tests on more than 1,000 rows (Wasserstein distance, Jensen-Shannon) measure distances
    between distributions, which a sample of this size estimates closely; row counts in the
    result are the data's, sample counts beside them."""
    from registry.gate import check_interface, load_scorer, score_frame
    from tasks.ingest import load_manifest, sample_snapshot

    dataset, sha = resolved.tags.get("dataset"), resolved.tags.get("dataset_sha256")
    if not sha and resolved.tags.get("reference_snapshot"):
        # A hand-made model: the data the gate judged it on stands in for its training data.
        dataset, _, sha = resolved.tags["reference_snapshot"].partition("/")
    if not dataset or not sha:
        raise InputError(
            f"{resolved.name} v{resolved.version} has no training snapshot tags "
            "(dataset, dataset_sha256) and was never evaluated on a snapshot: "
            f"run `pynomaly registry evaluate {resolved.name} --version {resolved.version}`"
        )
    trained_on = load_manifest(store, dataset, sha)
    reference = sample_snapshot(store, trained_on, sample_rows, chunk_rows)
    current = sample_snapshot(store, batch, sample_rows, chunk_rows)
    scorer = load_scorer(resolved.uri, tracking_uri, resolved.tags)
    check_interface(scorer, current, f"batch {batch.source}")
    result, html = detect_drift(
        reference,
        current,
        scorer.columns,
        drift_threshold=drift_threshold,
        reference_scores=score_frame(scorer, reference)[0],
        current_scores=score_frame(scorer, current)[0],
        score_threshold=scorer.threshold,
    )
    result.reference_rows, result.current_rows = trained_on.rows, batch.rows
    return asdict(result), html


def log_drift_run(
    tracking_uri: str,
    experiment_id: str,
    resolved: Any,
    batch: Any,
    result: dict[str, Any],
    html: str,
) -> dict[str, str]:
    """An MLflow run holding the HTML report and the drift numbers."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    mlflow_client = MlflowClient(tracking_uri)
    tags = {
        "pynomaly.kind": "drift",
        "model": resolved.name,
        "model_version": str(resolved.version),
        "reference_sha256": resolved.tags.get("dataset_sha256")
        or resolved.tags.get("reference_snapshot", ""),
        "batch_sha256": batch.sha256,
        "drift_detected": str(result["drift_detected"]).lower(),
    }
    run = mlflow_client.create_run(experiment_id, run_name=f"drift-{resolved.name}", tags=tags)
    run_id = run.info.run_id
    metrics = {"drift_share": result["drift_share"], "drifted_columns": result["drifted_columns"]}
    metrics.update(
        {f"score_{k}": v for k, v in result["score_drift"].items() if isinstance(v, float)}
    )
    now = int(time.time() * 1000)
    mlflow_client.log_batch(
        run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()]
    )
    mlflow_client.log_text(run_id, html, "drift/report.html")
    mlflow_client.log_dict(run_id, result, "drift/drift.json")
    mlflow_client.set_terminated(run_id)
    return {
        "run_id": run_id,
        "report_uri": f"{run.info.artifact_uri.rstrip('/')}/drift/report.html",
    }
