"""The detector catalog (plain data) and the preprocessing + detector pipeline built from it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, RobustScaler, StandardScaler

from pynomaly.errors import InputError


@dataclass(frozen=True)
class DetectorSpec:
    """One catalog entry: where the class lives, its default parameters, whether it takes a seed."""

    path: str
    defaults: dict[str, Any] = field(default_factory=dict)
    seeded: bool = False


# name -> detector. All follow PyOD's contract: fit(X) returns self, decision_function(X) is
# higher for more anomalous rows and depends on the training data only (ECOD and COPOD are
# our inductive versions of PyOD's, see tasks/tail_detectors.py).
CATALOG: dict[str, DetectorSpec] = {
    "iforest": DetectorSpec("pyod.models.iforest:IForest", {"n_estimators": 100}, seeded=True),
    "ecod": DetectorSpec("tasks.tail_detectors:ECOD"),
    "copod": DetectorSpec("tasks.tail_detectors:COPOD"),
    "hbos": DetectorSpec("pyod.models.hbos:HBOS", {"n_bins": 10}),
    "knn": DetectorSpec("pyod.models.knn:KNN", {"n_neighbors": 5, "method": "largest"}),
    "lof": DetectorSpec("pyod.models.lof:LOF", {"n_neighbors": 20}),
    "ocsvm": DetectorSpec("pyod.models.ocsvm:OCSVM", {"kernel": "rbf", "nu": 0.5}),
    # All components (PyOD's default) divide by a zero variance when a column is constant,
    # giving infinite scores (measured on ADBench mnist, optdigits, cardio).
    "pca": DetectorSpec("pyod.models.pca:PCA", {"n_components": 0.95}, seeded=True),
    "cblof": DetectorSpec("pyod.models.cblof:CBLOF", {"n_clusters": 8}, seeded=True),
    "loda": DetectorSpec(
        "pyod.models.loda:LODA", {"n_bins": 10, "n_random_cuts": 100}, seeded=True
    ),
    "inne": DetectorSpec("pyod.models.inne:INNE", {"n_estimators": 200}, seeded=True),
}

SCALERS = {
    "standard": StandardScaler,
    "robust": RobustScaler,
    "minmax": MinMaxScaler,
}

DEFAULT_DETECTOR = "iforest"
DEFAULT_CONTAMINATION = 0.05  # the expected anomaly share when neither option nor labels say


def detector_class(name: str) -> type:
    """The detector class behind a catalog name."""
    if name not in CATALOG:
        raise InputError(f"unknown detector {name!r}; choose one of: {', '.join(sorted(CATALOG))}")
    module, cls = CATALOG[name].path.split(":")
    return getattr(importlib.import_module(module), cls)


def make_detector(
    name: str,
    params: dict[str, Any] | None = None,
    *,
    contamination: float = 0.1,
    random_state: int | None = 0,
) -> Any:
    """An unfitted detector with the catalog defaults overridden by `params`."""
    spec = CATALOG.get(name)
    cls = detector_class(name)
    kwargs = {**spec.defaults, **(params or {}), "contamination": contamination}
    if spec.seeded and random_state is not None:
        kwargs["random_state"] = random_state
    return cls(**kwargs)


def make_preprocessor(frame: pd.DataFrame, scaler: str = "standard") -> ColumnTransformer:
    """Impute, scale the numeric columns of a frame and one-hot encode the others; unfitted."""
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
    categorical = [c for c in frame.columns if c not in numeric]
    steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
    if scaler != "none":
        steps.append(("scale", SCALERS[scaler]()))
    transformers: list[tuple[str, Any, list[str]]] = [("num", Pipeline(steps), numeric)]
    if categorical:
        onehot = OneHotEncoder(handle_unknown="ignore", sparse_output=False, max_categories=20)
        impute = SimpleImputer(strategy="most_frequent")
        transformers.append(
            ("cat", Pipeline([("impute", impute), ("onehot", onehot)]), categorical)
        )
    return ColumnTransformer(transformers, sparse_threshold=0.0)


def make_pipeline(
    features: pd.DataFrame,
    detector: str = DEFAULT_DETECTOR,
    params: dict[str, Any] | None = None,
    *,
    scaler: str = "standard",
    contamination: float = 0.1,
    random_state: int | None = 0,
) -> Pipeline:
    """Preprocessing and detector in one scikit-learn Pipeline, unfitted."""
    model = make_detector(detector, params, contamination=contamination, random_state=random_state)
    return Pipeline([("preprocess", make_preprocessor(features, scaler)), ("detector", model)])
