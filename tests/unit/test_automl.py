"""AutoML: quality floors, the three paths, determinism, the time budget, no label leakage."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import pytest
from pyod.utils.data import generate_data
from sklearn.metrics import roc_auc_score

from pynomaly.errors import InputError
from tasks.automl import (
    LABEL_FREE,
    SEMI_SUPERVISED,
    ScoreEnsemble,
    fit_best_detector,
    label_free_ranking,
    pooled_members,
)
from tasks.search_space import LABELLED_KINDS, META_CONFIGS

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "adbench.py"


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]:
    x_train, x_test, y_train, y_test = generate_data(
        n_train=300, n_test=200, n_features=5, contamination=0.1, random_state=7
    )
    cols = [f"f{i}" for i in range(5)]
    return (
        pd.DataFrame(x_train, columns=cols),
        pd.DataFrame(x_test, columns=cols),
        y_train.astype(int),
        y_test.astype(int),
    )


@pytest.fixture(scope="module")
def label_free_model(data: tuple) -> object:
    x_train, _, _, _ = data
    return fit_best_detector(x_train, random_state=0)


def test_label_free_quality_floor(data: tuple, label_free_model: object) -> None:
    _, x_test, _, y_test = data
    assert roc_auc_score(y_test, label_free_model.decision_function(x_test)) >= 0.9


def test_labelled_quality_floor(data: tuple) -> None:
    x_train, x_test, y_train, y_test = data
    model = fit_best_detector(x_train, y_train, time_budget_s=30, n_trials=6, random_state=0)
    assert roc_auc_score(y_test, model.decision_function(x_test)) >= 0.9
    assert model.best_config_["objective"] == "average_precision"


def test_fitted_contract(data: tuple, label_free_model: object) -> None:
    x_train, x_test, _, _ = data
    model = label_free_model
    board = model.leaderboard_
    assert list(board.columns[:2]) == ["number", "detector"]
    assert {"value", "seconds", "state", "params"} <= set(board.columns)
    # Label-free: no search ran; the board is the meta-model's ranking of every configuration.
    assert model.study_ is None
    assert sorted(board["detector"]) == sorted(META_CONFIGS)
    assert set(board["state"]) == {"PREDICTED"}
    assert board["value"].is_monotonic_decreasing
    assert model.best_config_["objective"] == LABEL_FREE
    assert set(model.best_config_) >= {"detectors", "scaler", "combine", "fit_on", "ranking"}
    # The threshold flags the default 5 % of the fitted rows.
    assert model.predict(x_train).mean() == pytest.approx(0.05, abs=0.01)
    assert set(np.unique(model.predict(x_test))) <= {0, 1}


def test_label_free_choice_pools_the_two_best_ranked_configurations(
    data: tuple, label_free_model: object
) -> None:
    x_train, _, _, _ = data
    ranking = label_free_ranking(x_train, random_state=0)
    expected = {m for name, _ in ranking[:2] for m in META_CONFIGS[name][0]}
    fitted = label_free_model.model_.members
    assert set(fitted) == expected == set(pooled_members(ranking))
    assert [d["name"] for d in label_free_model.best_config_["detectors"]] == fitted


def test_labelled_search_starts_from_each_kinds_defaults(data: tuple) -> None:
    x_train, _, y_train, _ = data
    model = fit_best_detector(x_train, y_train, time_budget_s=60, n_trials=3, random_state=0)
    kinds = [t.user_attrs["config"]["kind"] for t in model.study_.trials]
    assert kinds == LABELLED_KINDS
    # The "detector" kind is the label-free choice fitted on the rows labelled normal.
    detector_trial = model.study_.trials[LABELLED_KINDS.index("detector")]
    assert detector_trial.user_attrs["config"]["fit_on"] == "normal"
    assert (
        model.best_config_["trial"]
        == max(model.study_.trials, key=lambda t: (t.value, -t.number)).number
    )


def test_scores_do_not_depend_on_the_batch(data: tuple, label_free_model: object) -> None:
    _, x_test, _, _ = data
    whole = label_free_model.decision_function(x_test)
    alone = [label_free_model.decision_function(x_test.iloc[[i]])[0] for i in range(5)]
    np.testing.assert_allclose(whole[:5], alone)


def test_same_seed_same_search(data: tuple) -> None:
    x_train, _, y_train, _ = data
    runs = [
        fit_best_detector(x_train, y_train, time_budget_s=60, n_trials=6, random_state=3)
        for _ in range(2)
    ]
    assert runs[0].best_config_ == runs[1].best_config_
    first, second = (r.leaderboard_ for r in runs)
    assert first["detector"].tolist() == second["detector"].tolist()
    np.testing.assert_allclose(first["value"].to_numpy(float), second["value"].to_numpy(float))


def test_time_budget_is_respected(data: tuple) -> None:
    x_train, _, y_train, _ = data
    big = pd.concat([x_train] * 4, ignore_index=True)
    labels = np.concatenate([y_train] * 4)
    started = time.perf_counter()
    model = fit_best_detector(big, labels, time_budget_s=6, random_state=0)
    elapsed = time.perf_counter() - started
    # Slack: the first trial always finishes, and the winner is refitted after the search.
    assert elapsed <= 6 + 4
    assert len(model.leaderboard_) >= 2


def test_trial_callback_gets_every_trial(data: tuple) -> None:
    x_train, _, y_train, _ = data
    seen: list[dict] = []
    model = fit_best_detector(
        x_train, y_train, time_budget_s=30, n_trials=3, trial_callback=seen.append
    )
    assert [t["number"] for t in seen] == model.leaderboard_["number"].tolist()
    assert {"detector", "params", "value", "seconds", "state"} <= set(seen[0])


def test_picklable_with_cloudpickle(data: tuple, label_free_model: object) -> None:
    _, x_test, _, _ = data
    restored = cloudpickle.loads(cloudpickle.dumps(label_free_model))
    np.testing.assert_allclose(
        restored.decision_function(x_test), label_free_model.decision_function(x_test)
    )
    assert restored.threshold_ == label_free_model.threshold_


@pytest.mark.parametrize("storage", [None, "sqlite:///optuna.db"])
def test_parallel_search_needs_a_shared_server_storage(data: tuple, storage: str | None) -> None:
    x_train, _, _, _ = data
    with pytest.raises(InputError, match="PostgreSQL"):
        fit_best_detector(x_train, n_workers=2, storage=storage)


def test_labels_must_be_zero_or_one(data: tuple) -> None:
    x_train, _, y_train, _ = data
    with pytest.raises(InputError, match="0 .normal. and 1"):
        fit_best_detector(x_train, y_train * 2)


def test_few_labelled_anomalies_are_kept_out_of_the_fit(data: tuple) -> None:
    x_train, _, y_train, _ = data
    few = np.zeros_like(y_train)
    few[np.flatnonzero(y_train)[:2]] = 1
    model = fit_best_detector(x_train, few, random_state=0)
    assert model.best_config_["objective"] == SEMI_SUPERVISED
    assert model.best_config_["fit_on"] == "normal"
    assert model.study_ is None
    # Every member learned "normal" from the rows not labelled anomalous.
    assert {len(ref) for ref in model.model_.reference_} == {len(few) - 2}
    assert model.contamination == pytest.approx(2 / len(few))


def test_rank_ensemble_is_a_mean_of_training_ecdfs() -> None:
    rng = np.random.RandomState(0)
    train, new = rng.normal(size=(200, 3)), rng.normal(size=(10, 3))
    model = ScoreEnsemble(["iforest", "pca"], scaler="none", combine="rank").fit(train)
    raw = model.member_scores(new)
    expected = np.mean(
        [
            np.searchsorted(ref, s, side="right") / 200
            for ref, s in zip(model.reference_, raw, strict=True)
        ],
        axis=0,
    )
    np.testing.assert_allclose(model.decision_function(new), expected)


def test_benchmark_never_passes_test_labels_to_the_search(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("adbench", BENCHMARK)
    adbench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(adbench)
    X, y = generate_data(n_train=500, n_test=0, n_features=3, contamination=0.1, random_state=1)[
        ::2
    ]
    x_train, x_test, y_train, y_test = adbench.split_dataset(X, y.astype(int), seed=0)
    calls: list[tuple] = []

    class Recorded:
        best_config_ = {"detector": "stub", "objective": "stub"}
        leaderboard_ = pd.DataFrame({"number": [0]})

        def decision_function(self, rows: np.ndarray) -> np.ndarray:
            return rows[:, 0]

    def recorder(rows: np.ndarray, labels: np.ndarray | None = None, **kwargs: object) -> Recorded:
        calls.append((rows, labels))
        return Recorded()

    monkeypatch.setattr(adbench, "fit_best_detector", recorder)
    monkeypatch.setattr(adbench, "CATALOG", {})
    adbench.run_methods(x_train, x_test, y_train, y_test, seed=0, time_budget=1)
    assert len(calls) == 2  # automl and automl+labels; the plain classifier gets y_train too
    for rows, labels in calls:
        assert rows is x_train  # only the train part is searched
        assert labels is None or labels is y_train
    assert len(x_train) + len(x_test) == 1000  # resampled to ADBench's minimum


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"time_budget_s": -5}, "time budget must be a positive"), ({"n_trials": 0}, "trials")],
)
def test_bad_budget_or_trials_is_an_input_error(data: tuple, kwargs: dict, message: str) -> None:
    from pynomaly.errors import InputError

    with pytest.raises(InputError, match=message):
        fit_best_detector(data[0], **kwargs)
