"""The AutoML search space as plain data: detectors, their hyper-parameters, scalers, ensembles."""

from __future__ import annotations

from typing import Any

# A hyper-parameter is ("int", low, high, log), ("float", low, high, log) or ("choice", [values]).
# Ranges follow the PyOD docs and the values ADBench swept; catalog defaults sit inside them.
DETECTOR_PARAMS: dict[str, dict[str, tuple[Any, ...]]] = {
    "iforest": {
        "n_estimators": ("int", 50, 400, True),
        "max_features": ("float", 0.3, 1.0, False),
        "max_samples": ("choice", ["auto", 0.5, 1.0]),
    },
    "inne": {
        "n_estimators": ("int", 50, 400, True),
        "max_samples": ("choice", ["auto", 8, 32, 64]),
    },
    "cblof": {
        "n_clusters": ("int", 4, 20, False),
        "alpha": ("float", 0.7, 0.95, False),
        "use_weights": ("choice", [False, True]),
    },
    "pca": {
        "n_components": ("choice", [None, 0.5, 0.8, 0.95]),
        "whiten": ("choice", [False, True]),
    },
    "ecod": {},
    "copod": {},
    "hbos": {"n_bins": ("int", 5, 50, True), "alpha": ("float", 0.05, 0.5, False)},
    "knn": {
        "n_neighbors": ("int", 3, 60, True),
        "method": ("choice", ["largest", "mean", "median"]),
    },
    "lof": {"n_neighbors": ("int", 5, 100, True)},
    "ocsvm": {"nu": ("float", 0.05, 0.9, False), "gamma": ("choice", ["scale", "auto"])},
    "loda": {"n_bins": ("int", 5, 50, True), "n_random_cuts": ("int", 50, 300, True)},
}

SCALERS: list[str] = ["standard", "robust", "minmax", "none"]

# How an ensemble turns member scores into one: "rank" averages each member's position in its own
# training-score distribution (its ECDF), "zscore" averages robust z-scores against the training
# median and IQR. Both are fixed at fit time, so scores stay comparable across batches.
COMBINERS: list[str] = ["rank", "zscore"]

# The strong, diverse core: two isolation methods, a clustering method and a linear method. It is
# the label-free default and the first trial of every search (see benchmarks/README.md for the
# measurements behind it).
PRIOR_ENSEMBLE: tuple[str, ...] = ("iforest", "inne", "cblof", "pca")

# Detectors an ensemble may add to the prior core.
OPTIONAL_MEMBERS: tuple[str, ...] = ("ecod", "copod", "hbos", "ocsvm", "knn", "lof", "loda")

# Where the detectors are fitted when labels are given: every row, or only the rows labelled
# normal (semi-supervised novelty detection, usually much sharper when anomalies are known).
FIT_ON_LABELLED: list[str] = ["all", "normal"]

# The distance-based detectors are quadratic in rows; above this many search rows they would
# blow the time budget, so the search leaves them out.
QUADRATIC_DETECTORS: tuple[str, ...] = ("knn", "lof", "ocsvm")
