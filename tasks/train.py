"""Fit preprocessing + detector, calibrate the threshold, measure it, draw its plots."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pynomaly.errors import InputError
from registry.model import calibrate_threshold
from tasks.detectors import (
    DEFAULT_CONTAMINATION,
    DEFAULT_DETECTOR,
    detector_class,
    make_pipeline,
)

HOLDOUT_SHARE = 0.3
SAMPLE_TAG = "train_sample_rows"
# Fewer rows than this cannot calibrate a threshold or hold out labelled rows meaningfully.
MIN_TRAIN_ROWS = 10


@dataclass
class TrainResult:
    """A fitted detector with its threshold, metrics and plots."""

    estimator: Any
    threshold: float
    features: pd.DataFrame
    detector: str
    params: dict[str, Any]
    metrics: dict[str, float]
    figures: dict[str, Any] = field(default_factory=dict)
    automl: Any = None  # the fitted AutoML search, when --detector auto


def split_labels(
    frame: pd.DataFrame, label_column: str | None, where: str = "dataset"
) -> tuple[pd.DataFrame, pd.Series | None]:
    """Features and 0/1 labels; the label column must hold only 0 and 1 and both values."""
    if not label_column:
        return frame, None
    if label_column not in frame.columns:
        raise InputError(f"{where}: label column {label_column!r} not found")
    labels = frame[label_column]
    if labels.isna().any():
        row = int(np.flatnonzero(labels.isna().to_numpy())[0]) + 1
        raise InputError(f"{where}: label column {label_column!r} is empty at row {row}")
    bad = ~labels.isin([0, 1])
    if bad.any():
        raise InputError(
            f"{where}: label column {label_column!r} must hold 0 or 1, found {labels[bad].iloc[0]}"
        )
    y = labels.astype(int)
    if y.nunique() < 2 or y.sum() < 2:
        raise InputError(
            f"{where}: label column {label_column!r} needs at least 2 anomalies (1) and normals (0)"
        )
    return frame.drop(columns=[label_column]), y


def check_contamination(contamination: float | None) -> float | None:
    """The expected anomaly share when given: strictly between 0 and 0.5 (None: the default)."""
    if contamination is not None and not 0.0 < contamination < 0.5:
        raise InputError(
            f"--contamination {contamination:g}: must be strictly between 0 and 0.5 "
            "(the expected share of anomalies)"
        )
    return contamination


def check_detector(detector: str) -> str:
    """A catalog name or "auto"."""
    if detector != "auto":
        detector_class(detector)
    return detector


def check_training_data(
    frame: pd.DataFrame, label_column: str | None = None, where: str = "dataset"
) -> None:
    """Refuse data no detector can learn from: too few rows, only constant feature columns, or
    numbers so large that scaling a column overflows (its variance is not a finite float64)."""
    features, _ = split_labels(frame, label_column, where)
    if len(features) < MIN_TRAIN_ROWS:
        raise InputError(
            f"{where}: {len(features)} row(s); training needs at least {MIN_TRAIN_ROWS}"
        )
    if features.shape[1] == 0:
        raise InputError(f"{where}: no feature columns besides the label column")
    if all(features[c].nunique(dropna=True) <= 1 for c in features.columns):
        names = ", ".join(repr(c) for c in list(features.columns)[:5])
        raise InputError(
            f"{where}: every feature column is constant ({names}); nothing to learn from"
        )
    for col, values in features.select_dtypes("number").items():
        numbers = values.dropna().to_numpy(dtype=float)
        with np.errstate(over="ignore", invalid="ignore"):
            spread = np.var(numbers) if len(numbers) else 0.0
        if not np.isfinite(spread):
            pos = int(np.argmax(np.abs(numbers)))
            row = int(np.flatnonzero(values.notna().to_numpy())[pos]) + 1
            raise InputError(
                f"{where}: column {col!r} holds {numbers[pos]:g} at row {row}, too large to "
                "scale (its variance overflows); rescale the column"
            )


def label_metrics(y: np.ndarray, scores: np.ndarray, threshold: float, prefix: str = "") -> dict:
    """ROC-AUC, average precision, and precision/recall/F1 at the threshold."""
    from sklearn.metrics import (
        average_precision_score,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    flagged = scores > threshold
    return {
        f"{prefix}roc_auc": float(roc_auc_score(y, scores)),
        f"{prefix}average_precision": float(average_precision_score(y, scores)),
        f"{prefix}precision": float(precision_score(y, flagged, zero_division=0)),
        f"{prefix}recall": float(recall_score(y, flagged, zero_division=0)),
        f"{prefix}f1": float(f1_score(y, flagged, zero_division=0)),
    }


def plot_scores(
    scores: np.ndarray, threshold: float, y: np.ndarray | None = None
) -> dict[str, Any]:
    """Score histogram with the threshold; ROC and PR curves when labels exist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

    fig, ax = plt.subplots(figsize=(6, 4))
    if y is None:
        ax.hist(scores, bins=50, color="#4c72b0")
    else:
        ax.hist(scores[y == 0], bins=50, alpha=0.7, label="normal", color="#4c72b0")
        ax.hist(scores[y == 1], bins=50, alpha=0.7, label="anomaly", color="#dd8452")
        ax.legend()
    ax.axvline(threshold, color="red", linestyle="--", label="threshold")
    ax.set(xlabel="anomaly score (raw)", ylabel="rows", title="Score distribution")
    figures = {"score_histogram.png": fig}
    if y is not None:
        curves = {"roc_curve.png": RocCurveDisplay, "pr_curve.png": PrecisionRecallDisplay}
        for name, display in curves.items():
            figures[name], ax = plt.subplots(figsize=(5, 5))
            display.from_predictions(y, scores, ax=ax)
    return figures


def train_detector(
    frame: pd.DataFrame,
    *,
    label_column: str | None = None,
    detector: str = DEFAULT_DETECTOR,
    params: dict[str, Any] | None = None,
    contamination: float | None = None,
    holdout_share: float = HOLDOUT_SHARE,
    random_state: int = 0,
    time_budget_s: float = 60.0,
    n_trials: int | None = None,
    n_workers: int = 1,
    dask: str | None = None,
    optuna_storage: str | None = None,
    trial_callback: Any = None,
    where: str = "dataset",
) -> TrainResult:
    """Fit on the rows (less a stratified labelled hold-out) and measure on the hold-out."""
    from sklearn.model_selection import train_test_split

    check_contamination(contamination)
    check_training_data(frame, label_column, where)
    features, y = split_labels(frame, label_column, where)
    x_fit, x_hold, y_fit, y_hold = features, None, None, None
    if y is not None:
        x_fit, x_hold, y_fit, y_hold = train_test_split(
            features, y, test_size=holdout_share, stratify=y, random_state=random_state
        )
    if contamination is None:
        contamination = DEFAULT_CONTAMINATION if y_fit is None else float(y_fit.mean())

    started = time.perf_counter()
    automl = None
    if detector == "auto":
        from tasks.automl import fit_best_detector

        automl = fit_best_detector(
            x_fit,
            None if y_fit is None else y_fit.to_numpy(),
            time_budget_s=time_budget_s,
            n_trials=n_trials,
            random_state=random_state,
            storage=optuna_storage,
            n_workers=n_workers,
            dask=dask,
            contamination=contamination,
            trial_callback=trial_callback,
        )
        estimator, chosen = automl, dict(automl.best_config_)
    else:
        estimator = make_pipeline(
            x_fit, detector, params, contamination=contamination, random_state=random_state
        )
        try:
            estimator.fit(x_fit)
        except ValueError as exc:
            # e.g. CBLOF: "Could not form valid cluster separation" on some data.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(
                f"{where}: detector {detector!r} cannot be fitted on this data ({first}); "
                "choose another detector or --detector auto"
            ) from exc
        chosen = dict(params or {})
    fit_seconds = time.perf_counter() - started

    fit_scores = np.asarray(estimator.decision_function(x_fit), float)
    threshold = calibrate_threshold(fit_scores, contamination)
    metrics: dict[str, float] = {
        "threshold": threshold,
        "contamination": contamination,
        "fit_rows": float(len(x_fit)),
        "fit_seconds": fit_seconds,
        "fit_flagged_share": float((fit_scores > threshold).mean()),
    }
    if y is not None:
        hold_scores = np.asarray(estimator.decision_function(x_hold), float)
        metrics.update(label_metrics(y_hold.to_numpy(), hold_scores, threshold))
        metrics["holdout_rows"] = float(len(x_hold))
        figures = plot_scores(hold_scores, threshold, y_hold.to_numpy())
    else:
        figures = plot_scores(fit_scores, threshold)
    return TrainResult(
        estimator=estimator,
        threshold=threshold,
        features=features,
        detector=detector,
        params=chosen,
        metrics=metrics,
        figures=figures,
        automl=automl,
    )


def training_tags(
    dataset: str,
    manifest: Any,
    report: Any,
    detector: str,
    label_column: str | None,
    random_state: int,
    max_rows: int,
) -> dict[str, str]:
    """Lineage tags of the training run and the version it registers."""
    from registry.tracking import OWNER_TAG, code_version, owner

    # Trained on a sample of the snapshot: its size, from which the gate redraws the same rows.
    sampled = {SAMPLE_TAG: str(max_rows)} if manifest.rows > max_rows else {}
    return {
        **sampled,
        "dataset": dataset,
        "dataset_sha256": manifest.sha256,
        "dataset_rows": str(manifest.rows),
        "snapshot_uri": manifest.snapshot_uri,
        "source": manifest.source,
        "validation": "suite created" if report.suite_created else "passed",
        "code_version": code_version(),
        "detector": detector,
        "label_column": label_column or "",
        "random_state": str(random_state),  # the gate rebuilds the hold-out from it
        # This process, on the run and the version until the version is marked complete: the
        # next command tells a version a killed train left from one still being trained.
        OWNER_TAG: owner(),
    }


def training_report(
    model: str,
    registered: dict[str, Any],
    result: Any,
    dataset: str,
    manifest: Any,
    report: Any,
    sample_rows: int | None = None,
) -> tuple[dict[str, Any], str, list[dict[str, str]] | None]:
    """The train flow's result, its markdown summary and the AutoML leaderboard (when tuned)."""
    metrics = {k: round(v, 6) for k, v in result.metrics.items()}
    summary = {
        **registered,
        "detector": result.detector,
        "config": result.params,
        "threshold": result.threshold,
        "metrics": metrics,
        "dataset": dataset,
        "dataset_sha256": manifest.sha256,
        "rows": manifest.rows,
        "validation": report.summary(),
    }
    if sample_rows:
        summary["sample_rows"] = sample_rows
    board = None
    if result.automl is not None:
        ranked = result.automl.leaderboard_.sort_values("value", ascending=False)
        # Pruned trials carry an intermediate value: rank finished trials only (label-free
        # selection fits nothing: its board is the meta-model's predicted ranking).
        finished = ranked[ranked["state"].isin(["COMPLETE", "PREDICTED"])]
        summary["leaderboard_top5"] = finished.head(5).to_dict("records")
        board = ranked.astype(str).to_dict("records")
    markdown = (
        f"## Trained `{model}` v{registered['version']} ({registered['alias']})\n\n"
        f"detector `{result.detector}`, threshold {result.threshold:.6g}, dataset "
        f"`{dataset}` ({manifest.rows} rows, `{manifest.sha256[:12]}`"
        + (f"; trained on a sample of {sample_rows}" if sample_rows else "")
        + ")\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in metrics.items())
    )
    return summary, markdown, board
