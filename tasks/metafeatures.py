"""Label-free meta-features of a dataset: what a meta-model reads to predict which detector wins.

Following MetaOD (Zhao, Rossi & Akoglu, NeurIPS 2021): statistical features of the rows and
columns, plus landmarkers, i.e. the score distributions of a few cheap detectors fitted on a
subsample and how much they agree. Everything here is computed from X alone: no labels.
"""

from __future__ import annotations

import warnings
from itertools import combinations

import numpy as np

LANDMARK_ROWS = 2000  # landmarkers are fitted on a subsample: cheap, and the same at any size
LANDMARKERS = ("iforest", "hbos", "pca", "knn")


def _safe(value: float) -> float:
    """A finite float (meta-features must never be NaN or infinite)."""
    value = float(value)
    return value if np.isfinite(value) else 0.0


def _distribution(values: np.ndarray, prefix: str) -> dict[str, float]:
    """Shape of one distribution: skewness, kurtosis and the share of extreme values."""
    from scipy.stats import kurtosis, skew

    values = np.asarray(values, dtype=float)
    spread = values.std()
    if spread == 0:
        return {f"{prefix}_skew": 0.0, f"{prefix}_kurt": 0.0, f"{prefix}_tail3": 0.0}
    z = (values - values.mean()) / spread
    return {
        f"{prefix}_skew": _safe(np.clip(skew(values), -50, 50)),
        f"{prefix}_kurt": _safe(np.log1p(max(kurtosis(values) + 3.0, 0.0))),
        f"{prefix}_tail3": _safe((np.abs(z) > 3).mean()),
    }


def _column_features(X: np.ndarray) -> dict[str, float]:
    """Size, shape of the columns' distributions, correlation and intrinsic dimension."""
    from scipy.stats import kurtosis, skew

    n, d = X.shape
    std = X.std(axis=0)
    live = std > 0
    Xl = X[:, live] if live.any() else X
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skews = np.nan_to_num(skew(Xl, axis=0), nan=0.0)
        kurts = np.nan_to_num(kurtosis(Xl, axis=0), nan=0.0)
    uniques = np.array([len(np.unique(Xl[: min(n, 2000), j])) for j in range(Xl.shape[1])])
    out = {
        "log_rows": np.log10(n),
        "log_features": np.log10(d),
        "log_rows_per_feature": np.log10(n / d),
        "constant_share": 1.0 - live.mean(),
        "discrete_share": float((uniques <= 10).mean()),
        "binary_share": float((uniques <= 2).mean()),
        "skew_mean": float(np.mean(np.clip(np.abs(skews), 0, 50))),
        "skew_max": float(np.clip(np.abs(skews).max(), 0, 50)),
        "kurt_mean": float(np.mean(np.log1p(np.clip(kurts + 3, 0, None)))),
        "kurt_max": float(np.log1p(max(kurts.max() + 3, 0))),
    }
    sample = Xl[np.random.RandomState(0).choice(n, min(n, LANDMARK_ROWS), replace=False)]
    sample = (sample - sample.mean(axis=0)) / np.where(sample.std(axis=0) > 0, sample.std(0), 1)
    if sample.shape[1] > 1:
        corr = np.corrcoef(sample, rowvar=False)
        upper = np.abs(corr[np.triu_indices_from(corr, k=1)])
        out["abs_corr_mean"] = float(np.nan_to_num(upper).mean())
        out["abs_corr_high"] = float((np.nan_to_num(upper) > 0.8).mean())
        eigen = np.clip(np.linalg.eigvalsh(np.nan_to_num(corr))[::-1], 0, None)
        share = np.cumsum(eigen) / max(eigen.sum(), 1e-12)
        out["pc1_share"] = float(share[0])
        out["pcs_for_90_share"] = float((np.searchsorted(share, 0.9) + 1) / len(share))
    else:
        out.update(abs_corr_mean=0.0, abs_corr_high=0.0, pc1_share=1.0, pcs_for_90_share=1.0)
    return {k: _safe(v) for k, v in out.items()}


def landmark_scores(X: np.ndarray, random_state: int = 0) -> dict[str, np.ndarray]:
    """Scores of the cheap landmark detectors, fitted and scored on one subsample of X."""
    from sklearn.preprocessing import MinMaxScaler

    from tasks.detectors import make_detector

    rng = np.random.RandomState(random_state)
    rows = rng.choice(len(X), min(len(X), LANDMARK_ROWS), replace=False)
    sample = MinMaxScaler().fit_transform(X[rows])
    scores = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in LANDMARKERS:
            params = {"n_neighbors": 10} if name == "knn" else None
            detector = make_detector(name, params, random_state=random_state).fit(sample)
            scores[name] = np.nan_to_num(np.asarray(detector.decision_scores_, float))
    return scores


def _landmark_features(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Score distribution shapes of each landmarker and their pairwise rank agreement."""
    from scipy.stats import spearmanr

    out: dict[str, float] = {}
    names = sorted(scores)
    for name in names:
        out.update(_distribution(scores[name], f"lm_{name}"))
    agreements = []
    for a, b in combinations(names, 2):
        out[f"lm_agree_{a}_{b}"] = _safe(spearmanr(scores[a], scores[b]).statistic)
        agreements.append(out[f"lm_agree_{a}_{b}"])
    out["lm_agree_mean"] = float(np.mean(agreements)) if agreements else 0.0
    # Overlap of the top 5 % under each landmarker: do they flag the same rows?
    k = max(1, int(0.05 * len(scores[names[0]])))
    tops = [set(np.argsort(-scores[n])[:k]) for n in names]
    overlaps = [len(s & t) / k for s, t in combinations(tops, 2)]
    out["lm_top5_overlap"] = float(np.mean(overlaps)) if overlaps else 1.0
    return {k: _safe(v) for k, v in out.items()}


def meta_features(X: np.ndarray, random_state: int = 0) -> dict[str, float]:
    """All label-free meta-features of a numeric matrix (rows x columns), name -> value."""
    X = np.nan_to_num(np.asarray(X, dtype=float))
    return {**_column_features(X), **_landmark_features(landmark_scores(X, random_state))}
