"""What AutoML chooses from, as plain data: label-free configurations and the labelled search."""

from __future__ import annotations

from typing import Any

# ---------------------------------------------------------------- label-free selection

# The base detectors of label-free model selection (tasks/metaselect.py): catalog detectors with
# their defaults plus the neighbourhood sizes ADBench found to matter. member -> (detector, params)
META_MEMBERS: dict[str, tuple[str, dict[str, Any]]] = {
    "iforest": ("iforest", {}),
    "inne": ("inne", {}),
    "cblof": ("cblof", {}),
    "pca": ("pca", {}),
    "ecod": ("ecod", {}),
    "copod": ("copod", {}),
    "hbos": ("hbos", {}),
    "knn": ("knn", {}),
    "knn_mean20": ("knn", {"n_neighbors": 20, "method": "mean"}),
    "lof": ("lof", {}),
    "lof50": ("lof", {"n_neighbors": 50}),
    "ocsvm": ("ocsvm", {}),
    "loda": ("loda", {}),
}

# The configurations the meta-model ranks: every member alone, and robust z-score ensembles of
# IForest with partners of other kinds (each member's scores are standardised against its own
# training median and IQR, so scores stay comparable across batches).
# configuration -> (members, combiner)
META_CONFIGS: dict[str, tuple[tuple[str, ...], str | None]] = {
    **{member: ((member,), None) for member in META_MEMBERS},
    "z(iforest+inne+cblof+pca)": (("iforest", "inne", "cblof", "pca"), "zscore"),
    "rank(iforest+inne)": (("iforest", "inne"), "rank"),
    "z(iforest+inne+cblof+pca+ecod+copod+hbos)": (
        ("iforest", "inne", "cblof", "pca", "ecod", "copod", "hbos"),
        "zscore",
    ),
    "z(iforest+pca)": (("iforest", "pca"), "zscore"),
    "z(iforest+ecod)": (("iforest", "ecod"), "zscore"),
    "z(iforest+knn_mean20)": (("iforest", "knn_mean20"), "zscore"),
    "z(iforest+cblof)": (("iforest", "cblof"), "zscore"),
    "z(iforest+inne+pca)": (("iforest", "inne", "pca"), "zscore"),
}

# How many of the best-ranked configurations are pooled into the chosen model: two, whose
# members are combined with robust z-scores (measured under leave-one-dataset-out:
# benchmarks/README.md). One best guess is noisier than the union of the top two.
META_TOP_K = 2

# ---------------------------------------------------------------- labelled search

# A hyper-parameter is ("int", low, high, log), ("float", low, high, log) or ("choice", [values]).
# Kinds of labelled model:
# - "classifier": HistGradientBoostingClassifier on the features;
# - "xgbod": the same classifier on the features plus the scores of unsupervised detectors fitted
#   on the rows labelled normal (Zhao & Hryniewicki 2018), out-of-fold for the training rows;
# - "detector": the label-free choice fitted on the rows labelled normal only (semi-supervised
#   novelty detection), which wins when labelled anomalies are few or unlike each other.
LABELLED_KINDS: list[str] = ["classifier", "xgbod", "detector"]
CLASSIFIER_PARAMS: dict[str, tuple[Any, ...]] = {
    "learning_rate": ("float", 0.03, 0.3, True),
    "max_leaf_nodes": ("int", 8, 63, True),
    "min_samples_leaf": ("int", 5, 50, True),
    "l2_regularization": ("float", 1e-6, 1.0, True),
}
CLASSIFIER_DEFAULTS: dict[str, Any] = {
    "learning_rate": 0.1,
    "max_leaf_nodes": 31,
    "min_samples_leaf": 20,
    "l2_regularization": 1e-6,
}
# The detectors whose scores XGBOD adds as features: fast, and of different kinds.
XGBOD_MEMBERS: tuple[str, ...] = ("iforest", "knn_mean20", "lof", "ecod", "pca", "hbos")
