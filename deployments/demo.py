"""The demo dataset: scikit-learn's bundled breast-cancer data as an anomaly-detection task.

Benign tumours are the normal rows; a small share of malignant ones are the anomalies. Part
of the rows, labels removed, is kept back as the "new batch" the demo scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

LABEL = "is_malignant"
ANOMALY_SHARE = 0.1
BATCH_SHARE = 0.2


def build_demo_files(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Write train.csv (with labels), batch.csv (without) and batch_labels.csv; return paths."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns={"target": LABEL})
    # scikit-learn codes benign as 1 and malignant as 0.
    frame[LABEL] = (frame[LABEL] == 0).astype(int)
    rng = np.random.default_rng(seed)
    normal = frame[frame[LABEL] == 0]
    n_anomalies = round(len(normal) * ANOMALY_SHARE / (1 - ANOMALY_SHARE))
    anomalies = frame[frame[LABEL] == 1].sample(n=n_anomalies, random_state=seed)
    rows = pd.concat([normal, anomalies]).sample(frac=1.0, random_state=seed)
    in_batch = rng.random(len(rows)) < BATCH_SHARE
    train, batch = rows[~in_batch], rows[in_batch].reset_index(drop=True)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "train": folder / "train.csv",
        "batch": folder / "batch.csv",
        "batch_labels": folder / "batch_labels.csv",
    }
    train.to_csv(paths["train"], index=False)
    batch.drop(columns=[LABEL]).to_csv(paths["batch"], index=False)
    batch[[LABEL]].rename_axis("row_index").to_csv(paths["batch_labels"])
    return paths


def record_demo_feedback(
    results_url: str,
    scored: pd.DataFrame,
    truth: pd.Series,
    *,
    batch_id: str,
    model: str,
    version: int,
    folder: Path,
) -> dict[str, object]:
    """An analyst labels the rows the model flagged with the truth kept aside; the precision.

    Goes through a feedback file and `record_feedback_file`, as `pynomaly feedback` does.
    """
    from tasks.feedback import feedback_counts, feedback_engine, record_feedback_file

    flagged = scored.loc[scored["is_anomaly"].astype(bool), "row_index"].to_numpy()
    if len(flagged) == 0:
        return {"rows": 0, "labelled_anomalies": 0, "flagged_precision": None}
    path = folder / "feedback.csv"
    pd.DataFrame(
        {
            "batch_id": batch_id,
            "row_index": flagged,
            "label": truth.loc[flagged].to_numpy(),
            "note": "demo: the label kept aside",
        }
    ).to_csv(path, index=False)
    recorded = record_feedback_file(results_url, str(path), "demo")
    engine = feedback_engine(results_url)
    try:
        counts = next(
            c for c in feedback_counts(engine) if (c.model, c.version) == (model, int(version))
        )
    finally:
        engine.dispose()
    return {
        "rows": recorded["rows"],
        "labelled_anomalies": recorded["anomalies"],
        "flagged_precision": counts.flagged_precision,
    }
