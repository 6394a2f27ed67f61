"""Label-free selection: meta-features, the meta-model file, and leave-one-dataset-out wiring."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor

from pynomaly.errors import InputError
from tasks.metafeatures import meta_features
from tasks.metaselect import (
    FOREST_MIN_LEAF,
    FOREST_TREES,
    read_meta_model,
    save_meta_model,
    shipped_meta_model,
    train_meta_model,
)
from tasks.search_space import META_CONFIGS

ROOT = Path(__file__).resolve().parents[2]


def _corpus(n_tasks: int = 40, n_configs: int = 4) -> tuple[list[dict], np.ndarray]:
    rng = np.random.RandomState(0)
    meta = [{"a": float(rng.normal()), "b": float(rng.uniform())} for _ in range(n_tasks)]
    # Config 0 wins where a > 0, config 1 where a <= 0: something a forest can learn.
    perf = rng.uniform(0.5, 0.6, size=(n_tasks, n_configs))
    for i, m in enumerate(meta):
        perf[i, 0 if m["a"] > 0 else 1] = 0.9
    return meta, perf


def test_meta_model_predicts_what_the_forest_it_was_made_from_predicts() -> None:
    meta, perf = _corpus()
    model = train_meta_model(meta, perf, ["c0", "c1", "c2", "c3"], random_state=0)
    X = np.array([[m["a"], m["b"]] for m in meta])
    forest = RandomForestRegressor(
        n_estimators=FOREST_TREES, min_samples_leaf=FOREST_MIN_LEAF, random_state=0
    ).fit(X, perf - perf.mean(axis=1, keepdims=True))
    probe = {"a": 0.7, "b": 0.2}
    expected = forest.predict([[0.7, 0.2]])[0]
    predicted = model.predict(probe)
    np.testing.assert_allclose([predicted[c] for c in model.configs], expected, atol=1e-3)
    assert model.rank(probe)[0][0] == "c0"
    assert model.rank({"a": -0.7, "b": 0.2})[0][0] == "c1"


def test_meta_model_file_round_trip_and_refusals(tmp_path: Path) -> None:
    meta, perf = _corpus()
    model = train_meta_model(meta, perf, ["c0", "c1", "c2", "c3"], info={"tasks": 40})
    path = tmp_path / "meta.json.gz"
    save_meta_model(model, path)
    again = read_meta_model(path)
    assert again.predict({"a": 0.3, "b": 0.5}) == model.predict({"a": 0.3, "b": 0.5})
    assert again.info == {"tasks": 40}

    data = json.loads(gzip.decompress(path.read_bytes()))
    data["version"] = 99
    path.write_bytes(gzip.compress(json.dumps(data).encode()))
    with pytest.raises(InputError, match=r"meta\.json\.gz: not a version 1"):
        read_meta_model(path)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match="cannot read the meta-model"):
        read_meta_model(path)
    with pytest.raises(InputError, match="meta-features missing"):
        model.predict({"a": 1.0})


def test_shipped_meta_model_covers_the_configurations_and_the_meta_features() -> None:
    model = shipped_meta_model()
    assert model.configs == list(META_CONFIGS)
    rng = np.random.RandomState(1)
    features = meta_features(rng.normal(size=(300, 4)))
    assert model.features == sorted(features)
    assert model.info["tasks"] >= 300  # the real, embedding and synthetic tasks
    assert {"real", "extra", "local", "global", "dependency", "clustered"} <= set(
        model.info["tasks_by_kind"]
    )
    assert len(model.rank(features)) == len(META_CONFIGS)


def test_meta_features_are_finite_and_seeded_even_with_constant_columns() -> None:
    rng = np.random.RandomState(2)
    X = np.column_stack([rng.normal(size=500), np.ones(500), rng.randint(0, 2, 500)])
    first, second = meta_features(X, random_state=0), meta_features(X, random_state=0)
    assert first == second
    assert all(np.isfinite(v) for v in first.values())
    assert first["constant_share"] == pytest.approx(1 / 3)
    assert first["binary_share"] == pytest.approx(0.5)  # of the two live columns


def test_leave_one_dataset_out_never_trains_on_the_held_out_dataset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = importlib.util.spec_from_file_location("adbench", ROOT / "benchmarks" / "adbench.py")
    adbench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(adbench)
    import benchmarks.metacorpus as metacorpus
    import tasks.metaselect as metaselect

    corpus = [
        {"key": f"{d}__{kind}__0", "dataset": d, "kind": kind, "meta_features": {"d": d}}
        for d in ("cardio", "WBC", "MVTec-AD_bottle")
        for kind in ("real", "local", "extra")
    ]
    monkeypatch.setattr(metacorpus, "corpus_tasks", lambda _: [_Task(t["key"]) for t in corpus])
    monkeypatch.setattr(metacorpus, "load_corpus", lambda _: corpus)
    monkeypatch.setattr(
        metacorpus, "performance_matrix", lambda tasks, c: np.zeros((len(tasks), 1))
    )
    # The stand-in meta-model is the list of datasets it was trained on.
    monkeypatch.setattr(
        metaselect, "train_meta_model", lambda meta, *a, **k: [m["d"] for m in meta]
    )
    for task in corpus:
        (tmp_path / f"{task['key']}.npz").touch()  # built already: nothing to compute
    models = adbench.lodo_meta_models(tmp_path, tmp_path, ["cardio", "WBC"], print)
    assert set(models["cardio"]) == {"WBC", "MVTec-AD_bottle"}
    assert set(models["WBC"]) == {"cardio", "MVTec-AD_bottle"}
    assert len(models["cardio"]) == 6  # the held-out dataset's real and synthetic tasks are out


class _Task:
    """A stand-in corpus task: lodo_meta_models reads only its key."""

    def __init__(self, key: str):
        self.key = key
