"""AutoML with two spawned workers sharing one Optuna study on a real PostgreSQL database."""

from __future__ import annotations

import cloudpickle
import optuna
import pytest
from pyod.utils.data import generate_data

from tasks.automl import fit_best_detector

pytestmark = pytest.mark.integration


def test_two_workers_share_one_postgres_study(pg_url: str) -> None:
    x_train, _, y_train, _ = generate_data(
        n_train=300, n_test=10, n_features=4, contamination=0.1, random_state=3
    )
    model = fit_best_detector(
        x_train,
        y_train.astype(int),
        time_budget_s=90,
        n_trials=10,
        storage=pg_url,
        n_workers=2,
        study_name="shared-study",
    )
    stored = optuna.load_study(study_name="shared-study", storage=pg_url)
    board = model.leaderboard_
    per_worker = board["worker"].value_counts().to_dict()
    # Both processes ran trials, and their trials add up to the one shared study's count;
    # MaxTrialsCallback may let the other worker finish the trial it had already started.
    assert set(per_worker) == {0, 1}
    assert sum(per_worker.values()) == len(stored.trials) == len(board)
    assert 10 <= len(stored.trials) <= 11
    assert sorted(board["number"]) == list(range(len(board)))
    assert model.best_config_["trial"] in set(board["number"])
    # The pickled model keeps the study name but not the engine (nor the URL's password).
    restored = cloudpickle.loads(cloudpickle.dumps(model))
    assert restored.study_ is None and restored.study_name_ == "shared-study"
