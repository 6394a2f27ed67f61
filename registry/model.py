"""The pyfunc model every platform-trained detector is logged as."""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from pynomaly.errors import InputError


class DetectorModel(mlflow.pyfunc.PythonModel):
    """Fitted preprocessing + detector and the threshold calibrated at training time.

    predict returns raw scores (higher = more anomalous, comparable across batches) and
    `is_anomaly` = score > threshold; scores are never normalised per batch.
    """

    def __init__(self, estimator: Any, threshold: float, feature_columns: list[str]):
        self.estimator = estimator
        self.threshold = float(threshold)
        self.feature_columns = list(feature_columns)

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw anomaly scores of the rows of `frame`."""
        return np.asarray(self.estimator.decision_function(frame[self.feature_columns]), float)

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        scores = self.score(pd.DataFrame(model_input))
        return pd.DataFrame({"score": scores, "is_anomaly": scores > self.threshold})


def calibrate_threshold(train_scores: np.ndarray, contamination: float) -> float:
    """Raw-score threshold that flags the `contamination` share of the training rows."""
    if not 0.0 < contamination < 0.5:
        raise InputError(f"contamination must be between 0 and 0.5, got {contamination}")
    return float(np.quantile(np.asarray(train_scores, dtype=float), 1.0 - contamination))
