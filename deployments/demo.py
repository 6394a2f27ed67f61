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
