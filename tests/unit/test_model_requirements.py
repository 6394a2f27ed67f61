"""A logged model names its pinned requirements without MLflow's inference subprocess."""

from __future__ import annotations

from importlib import metadata

import numpy as np
import pandas as pd
from pyod.models.iforest import IForest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from registry.model import DetectorModel
from registry.tracking import model_requirements


def test_requirements_are_the_distributions_the_pickle_refers_to() -> None:
    x = pd.DataFrame(np.random.default_rng(0).normal(size=(200, 3)), columns=list("abc"))
    model = DetectorModel(
        make_pipeline(StandardScaler(), IForest(n_estimators=10)).fit(x), 0.0, list("abc")
    )
    pins = model_requirements(model)
    assert pins is not None
    expected = {"mlflow", "cloudpickle", "numpy", "scikit-learn", "pyod"}
    assert {f"{name}=={metadata.version(name)}" for name in expected} <= set(pins)
    assert not any(pin.startswith(("abc==", "builtins==")) for pin in pins)


def test_a_model_that_does_not_pickle_plainly_leaves_it_to_mlflow() -> None:
    model = DetectorModel(lambda frame: frame, 0.0, ["a"])  # a lambda pickles only by cloudpickle
    assert model_requirements(model) is None
