"""ECOD and COPOD whose scores for new rows depend on the training data only.

PyOD's ECOD and COPOD score a batch by re-estimating the empirical CDFs on training rows plus
that batch, so the same row gets a different score in a different batch (measured: 6.351 vs
6.360). A platform that stores raw scores and one calibrated threshold needs scores that are
comparable across batches, so these keep the training ECDFs and look new rows up in them.
The scoring formulas are PyOD's (ECOD: Li et al., TKDE 2022; COPOD: Li et al., ICDM 2020).
"""

from __future__ import annotations

import numpy as np
from pyod.models.base import BaseDetector
from scipy.stats import skew
from sklearn.utils.validation import check_array, check_is_fitted


class _TailProbabilities(BaseDetector):
    """Sum over features of -log tail probabilities under the training ECDF of each feature."""

    def __init__(self, contamination: float = 0.1):
        super().__init__(contamination=contamination)

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> _TailProbabilities:
        X = check_array(X, dtype=float)
        self._set_n_classes(y)
        self.sorted_ = np.sort(X, axis=0)
        self.skew_sign_ = np.sign(skew(X, axis=0, nan_policy="omit"))
        self.decision_scores_ = self.decision_function(X)
        self._process_decision_scores()
        return self

    def _tails(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.sorted_.shape[0]
        columns = list(zip(self.sorted_.T, X.T, strict=True))
        below = np.column_stack([np.searchsorted(c, x, side="right") for c, x in columns])
        above = n - np.column_stack([np.searchsorted(c, x, side="left") for c, x in columns])
        # (count + 1) / (n + 1): a row beyond the training range gets a finite, large score.
        left = -np.log((below + 1) / (n + 1))
        right = -np.log((above + 1) / (n + 1))
        skewed = np.where(self.skew_sign_ < 0, left, right)
        return left, right, skewed


class ECOD(_TailProbabilities):
    """Empirical-CDF outlier detection: per feature the larger of the tails, then summed."""

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "sorted_")
        left, right, skewed = self._tails(check_array(X, dtype=float))
        return np.maximum(skewed, np.maximum(left, right)).sum(axis=1)


class COPOD(_TailProbabilities):
    """Copula-based outlier detection: skew-corrected tail vs mean of both tails, summed."""

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "sorted_")
        left, right, skewed = self._tails(check_array(X, dtype=float))
        return np.maximum(skewed, (left + right) / 2).sum(axis=1)
