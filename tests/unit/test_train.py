"""Training: labels checked, held-back metrics honest, threshold stored with the model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyod.utils.data import generate_data

from pynomaly.errors import InputError
from registry.model import DetectorModel
from tasks.train import train_detector


@pytest.fixture(scope="module")
def labelled() -> pd.DataFrame:
    x, _, y, _ = generate_data(
        n_train=500, n_test=1, n_features=4, contamination=0.05, random_state=7
    )
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    frame["label"] = y.astype(int)
    return frame


def test_labelled_training_measures_on_the_hold_out(labelled: pd.DataFrame) -> None:
    result = train_detector(labelled, label_column="label", detector="iforest")
    m = result.metrics
    assert m["roc_auc"] >= 0.9 and m["average_precision"] >= 0.5
    assert m["holdout_rows"] == 150 and m["fit_rows"] == 350
    assert m["contamination"] == pytest.approx(labelled["label"].mean(), abs=0.01)
    assert list(result.features.columns) == ["a", "b", "c", "d"]
    assert set(result.figures) == {"score_histogram.png", "roc_curve.png", "pr_curve.png"}


def test_model_returns_raw_scores_and_the_stored_threshold(labelled: pd.DataFrame) -> None:
    result = train_detector(labelled.drop(columns="label"), detector="ecod", contamination=0.1)
    model = DetectorModel(result.estimator, result.threshold, list(result.features.columns))
    first = model.predict(None, result.features.head(10))
    again = model.predict(None, result.features.head(3))
    # Raw scores: a row's score does not depend on the batch it comes in.
    np.testing.assert_allclose(first["score"].head(3), again["score"])
    flagged = model.predict(None, result.features)["is_anomaly"].mean()
    assert flagged == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([0, 1, 2] * 20, "must hold 0 or 1, found 2"),
        ([0] * 59 + [1], "needs at least 2 anomalies"),
        ([0, 1, np.nan] * 20, "is empty at row 3"),
    ],
)
def test_bad_labels(labels: list, message: str) -> None:
    frame = pd.DataFrame({"x": np.arange(60.0), "y": labels})
    with pytest.raises(InputError, match=message):
        train_detector(frame, label_column="y")


def test_missing_label_column() -> None:
    with pytest.raises(InputError, match="label column 'nope' not found"):
        train_detector(pd.DataFrame({"x": [1.0, 2.0]}), label_column="nope")


def test_a_detector_that_cannot_fit_is_a_clear_input_error(monkeypatch) -> None:
    import tasks.train as train_module

    class Unfittable:
        def fit(self, X):
            raise ValueError("Could not form valid cluster separation.\nmore detail")

    monkeypatch.setattr(train_module, "make_pipeline", lambda *a, **k: Unfittable())
    with pytest.raises(
        InputError,
        match="detector 'cblof' cannot be fitted on this data "
        r"\(Could not form valid cluster separation.\); choose another",
    ):
        train_detector(pd.DataFrame({"x": np.arange(10.0)}), detector="cblof", where="d.csv")


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0, -1.0, float("nan")])
def test_contamination_outside_the_open_interval_is_refused(value: float) -> None:
    frame = pd.DataFrame({"x": np.arange(20.0)})
    with pytest.raises(InputError, match=f"--contamination {value:g}: must be strictly between"):
        train_detector(frame, contamination=value)


def test_a_given_contamination_is_used_as_given() -> None:
    """0.01 is kept (a falsy-looking default used to replace a given 0 by 0.05)."""
    frame = pd.DataFrame({"x": np.arange(200.0), "z": np.arange(200.0) % 7})
    assert train_detector(frame, contamination=0.01).metrics["contamination"] == 0.01


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"x": [1.0]}), "1 row\\(s\\); training needs at least 10"),
        (pd.DataFrame({"x": [2.0] * 30, "c": ["k"] * 30}), "every feature column is constant"),
        (
            pd.DataFrame({"x": [1.0] * 29 + [1e308], "z": np.arange(30.0)}),
            "column 'x' holds 1e\\+308 at row 30, too large to scale",
        ),
        (
            pd.DataFrame({"x": [np.nan, -1e308] + [0.0] * 28}),
            "column 'x' holds -1e\\+308 at row 2",
        ),
    ],
)
def test_data_nothing_can_be_learnt_from_is_refused(frame: pd.DataFrame, message: str) -> None:
    with pytest.raises(InputError, match=f"d.csv: {message}"):
        train_detector(frame, where="d.csv")


def test_one_varying_column_among_constant_ones_trains() -> None:
    frame = pd.DataFrame({"x": [2.0] * 30, "z": np.arange(30.0)})
    assert train_detector(frame).metrics["fit_rows"] == 30
