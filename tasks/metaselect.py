"""Label-free model selection by meta-learning (MetaOD: Zhao, Rossi & Akoglu, NeurIPS 2021).

Without labels nothing on the user's data says which detector works. What does is experience:
on a corpus of tasks with known labels (benchmarks/metacorpus.py) we know how well every
configuration of tasks/search_space.META_CONFIGS did, and each task's label-free meta-features
(tasks/metafeatures.py). A random forest maps meta-features to each configuration's ROC-AUC
relative to the task's mean over configurations; on new data the configurations are ranked by
that prediction. Under leave-one-dataset-out this beats the default IForest (benchmarks/README.md).

The trained forest ships as gzip-compressed JSON (tasks/metamodel.json.gz): plain numbers,
loaded without pickle, versioned, rebuilt by `python benchmarks/build_metamodel.py` from
../shared/datasets only.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pynomaly.errors import InputError

META_MODEL_PATH = Path(__file__).with_name("metamodel.json.gz")
FORMAT = "pynomaly-metamodel"
FORMAT_VERSION = 1
FOREST_TREES = 300
FOREST_MIN_LEAF = 3
VALUE_SCALE = 1000  # leaf values are stored as integers in thousandths of ROC-AUC


@dataclass
class MetaModel:
    """A random-forest regressor from meta-features to each configuration's relative ROC-AUC."""

    features: list[str]
    configs: list[str]
    trees: list[dict[str, list]]  # per tree: left, right, feature, threshold, leaf values
    info: dict[str, Any]

    def predict(self, meta: dict[str, float]) -> dict[str, float]:
        """Predicted ROC-AUC of every configuration, relative to the mean over configurations."""
        missing = [f for f in self.features if f not in meta]
        if missing:
            raise InputError(f"meta-features missing for the meta-model: {', '.join(missing)}")
        x = np.array([meta[f] for f in self.features], dtype=float)
        total = np.zeros(len(self.configs))
        for tree in self.trees:
            node = 0
            left, right = tree["left"], tree["right"]
            while left[node] >= 0:
                node = (
                    left[node]
                    if x[tree["feature"][node]] <= tree["threshold"][node]
                    else right[node]
                )
            total += np.asarray(tree["value"][tree["leaf"][node]], dtype=float)
        mean = total / (len(self.trees) * VALUE_SCALE)
        return dict(zip(self.configs, mean.tolist(), strict=True))

    def rank(
        self, meta: dict[str, float], allowed: list[str] | None = None
    ) -> list[tuple[str, float]]:
        """Configurations best first, with their predicted relative ROC-AUC."""
        predicted = self.predict(meta)
        names = [c for c in self.configs if allowed is None or c in allowed]
        return sorted(((c, predicted[c]) for c in names), key=lambda item: (-item[1], item[0]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "features": self.features,
            "configs": self.configs,
            "info": self.info,
            "trees": self.trees,
        }


def train_meta_model(
    meta: list[dict[str, float]],
    performance: np.ndarray,
    configs: list[str],
    *,
    random_state: int = 0,
    info: dict[str, Any] | None = None,
) -> MetaModel:
    """Fit the forest on tasks' meta-features and configurations' ROC-AUC (tasks x configs)."""
    from sklearn.ensemble import RandomForestRegressor

    features = sorted(meta[0])
    X = np.array([[m[f] for f in features] for m in meta], dtype=float)
    performance = np.asarray(performance, dtype=float)
    target = performance - performance.mean(axis=1, keepdims=True)
    forest = RandomForestRegressor(
        n_estimators=FOREST_TREES, min_samples_leaf=FOREST_MIN_LEAF, random_state=random_state
    ).fit(X, target)
    trees = [_export_tree(estimator.tree_) for estimator in forest.estimators_]
    return MetaModel(features, list(configs), trees, dict(info or {}))


def _export_tree(tree: Any) -> dict[str, list]:
    """One fitted sklearn tree as plain lists; leaf values once per leaf, in thousandths."""
    is_leaf = tree.children_left < 0
    leaves = np.flatnonzero(is_leaf)
    return {
        "left": tree.children_left.tolist(),
        "right": tree.children_right.tolist(),
        "feature": [int(f) if f >= 0 else -1 for f in tree.feature],
        "threshold": [round(float(t), 6) if t != -2 else 0 for t in tree.threshold],
        "leaf": np.where(is_leaf, np.cumsum(is_leaf) - 1, -1).tolist(),
        "value": [
            [round(float(v) * VALUE_SCALE) for v in tree.value[node][:, 0]] for node in leaves
        ],
    }


def save_meta_model(model: MetaModel, path: Path = META_MODEL_PATH) -> None:
    """Write the meta-model as gzip-compressed compact JSON (reproducible bytes: no mtime)."""
    text = json.dumps(model.to_dict(), separators=(",", ":")) + "\n"
    path.write_bytes(gzip.compress(text.encode(), mtime=0))


def read_meta_model(path: Path = META_MODEL_PATH) -> MetaModel:
    """Read a meta-model file (plain JSON; nothing is unpickled)."""
    try:
        data = json.loads(gzip.decompress(path.read_bytes()))
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: cannot read the meta-model ({exc})") from exc
    if data.get("format") != FORMAT or data.get("version") != FORMAT_VERSION:
        raise InputError(
            f"{path}: not a version {FORMAT_VERSION} {FORMAT} file "
            f"(format {data.get('format')!r}, version {data.get('version')!r})"
        )
    return MetaModel(data["features"], data["configs"], data["trees"], data.get("info", {}))


@lru_cache(maxsize=1)
def shipped_meta_model() -> MetaModel:
    """The meta-model that ships with the package (read once per process)."""
    return read_meta_model(META_MODEL_PATH)
