"""Models that learn from labels: a gradient-boosted classifier, alone or XGBOD-style.

Both keep the detector contract of the platform: `fit(X, y)` returns self and
`decision_function(X)` gives raw scores, higher = more anomalous (the classifier's log-odds),
fixed at fit time so a row scores the same in any batch.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from tasks.detectors import make_detector
from tasks.search_space import CLASSIFIER_DEFAULTS, META_MEMBERS

XGBOD_FOLDS = 3
MAX_DETECTOR_ROWS = 10_000  # detectors are fitted on at most this many rows (ADBench's cap)


def _finite(scores: np.ndarray) -> np.ndarray:
    """Scores with NaN/inf replaced by fixed finite values (PCA gives inf on constant columns)."""
    return np.nan_to_num(np.asarray(scores, dtype=float), nan=0.0, posinf=1e12, neginf=-1e12)


def capped_rows(n_rows: int, random_state: int, cap: int = MAX_DETECTOR_ROWS) -> np.ndarray:
    """All row positions, or a seeded sorted sample of `cap` of them."""
    if n_rows <= cap:
        return np.arange(n_rows)
    return np.sort(np.random.RandomState(random_state).choice(n_rows, cap, replace=False))


def fit_member(member: str, matrix: np.ndarray, random_state: int) -> Any:
    """One META_MEMBERS detector fitted on (at most MAX_DETECTOR_ROWS of) the rows."""
    name, params = META_MEMBERS[member]
    rows = capped_rows(len(matrix), random_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_detector(name, params, random_state=random_state).fit(matrix[rows])


def make_classifier(params: dict[str, Any] | None, random_state: int) -> Any:
    """An unfitted HistGradientBoostingClassifier with our defaults overridden by params."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        **{**CLASSIFIER_DEFAULTS, **(params or {})}, random_state=random_state
    )


class ClassifierScorer:
    """Gradient-boosted classifier on numeric features; scores are its log-odds of 'anomaly'."""

    def __init__(self, params: dict[str, Any] | None = None, random_state: int = 0):
        self.params = params
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> ClassifierScorer:
        self.classifier_ = make_classifier(self.params, self.random_state).fit(X, y)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return _finite(self.classifier_.decision_function(X))


class XGBODScorer:
    """The classifier on the features plus unsupervised detector scores (XGBOD).

    The detectors are fitted on the rows labelled normal. The training rows get out-of-fold
    detector scores (detectors fitted on the normal rows of the other folds), so the classifier
    never learns from scores a detector gave the very rows it was fitted on.
    """

    def __init__(
        self,
        members: tuple[str, ...],
        params: dict[str, Any] | None = None,
        random_state: int = 0,
    ):
        self.members = members
        self.params = params
        self.random_state = random_state

    def _fit_detectors(self, X: np.ndarray) -> list[Any]:
        fitted = []
        for member in self.members:
            try:
                fitted.append(fit_member(member, X, self.random_state))
            except Exception:  # noqa: BLE001 - a detector that cannot fit adds no feature
                fitted.append(None)
        return fitted

    @staticmethod
    def _features(detectors: list[Any], X: np.ndarray) -> np.ndarray:
        columns = [
            np.zeros(len(X)) if d is None else _finite(d.decision_function(X)) for d in detectors
        ]
        return np.column_stack([X, *columns])

    def fit(self, X: np.ndarray, y: np.ndarray) -> XGBODScorer:
        from sklearn.model_selection import StratifiedKFold

        y = np.asarray(y, dtype=int)
        folds = StratifiedKFold(
            min(XGBOD_FOLDS, int(y.sum())), shuffle=True, random_state=self.random_state
        )
        augmented = np.zeros((len(X), X.shape[1] + len(self.members)))
        for fit_rows, score_rows in folds.split(X, y):
            normal = fit_rows[y[fit_rows] == 0]
            augmented[score_rows] = self._features(self._fit_detectors(X[normal]), X[score_rows])
        self.detectors_ = self._fit_detectors(X[y == 0])
        self.classifier_ = make_classifier(self.params, self.random_state).fit(augmented, y)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return _finite(self.classifier_.decision_function(self._features(self.detectors_, X)))
