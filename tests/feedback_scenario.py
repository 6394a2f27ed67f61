"""Analyst feedback changes a gate decision and becomes retrain labels: one scenario, run on a
SQLite results DB (tests/flows) and on PostgreSQL (tests/integration).

The champion is a detector logged by hand that looks at one column only, so it misses the
anomalies (they sit in column `a`); the platform's challenger sees every column. Without
labels the gate cannot tell who is right (the two disagree: keep for review); once analysts
label the champion's batch, the challenger is judged on those labels and promoted. The
retrain then runs the labelled search on the labelled batch rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pynomaly.settings import get_settings

FEATURES = ["a", "b", "c", "d"]


def make_frame(seed: int, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Normal rows around 0; ~8% anomalies far out in column `a`; heavy tails in `d`."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.08).astype(int)
    x = rng.normal(size=(n, len(FEATURES)))
    x[:, 0] += 6.0 * y * rng.choice([-1, 1], n)
    x[:, 3] = rng.standard_t(2, n)  # extreme but normal values: what the champion flags
    return pd.DataFrame(x, columns=FEATURES), y


def register_column_d_champion(train: pd.DataFrame) -> int:
    """An IsolationForest on column d only, logged and registered with plain MLflow."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import IsolationForest
    from sklearn.pipeline import Pipeline

    from registry.versions import CHAMPION, client

    model = Pipeline(
        [
            ("only_d", ColumnTransformer([("d", "passthrough", ["d"])])),
            ("forest", IsolationForest(random_state=0, contamination=0.08)),
        ]
    ).fit(train)
    uri = get_settings().mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("pynomaly")
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(train.head(), model.decision_function(train.head())),
            serialization_format="cloudpickle",
        )
    version = int(mlflow.register_model(info.model_uri, "m").version)
    client(uri).set_registered_model_alias("m", CHAMPION, str(version))
    return version


def scenario_data(tmp_path: Path) -> dict:
    """Training rows (600) and a batch (300) written as CSV, with the batch's truth."""
    train, _ = make_frame(0, 600)
    batch, truth = make_frame(1, 300)
    paths = {"train": tmp_path / "train.csv", "batch": tmp_path / "batch.csv"}
    train.to_csv(paths["train"], index=False)
    batch.to_csv(paths["batch"], index=False)
    return {"train_frame": train, "truth": truth, **{k: str(v) for k, v in paths.items()}}


def feedback_scenario(tmp_path: Path) -> None:
    """Champion v1 by hand, challenger v2, a scored batch, feedback, the gate again, a retrain."""
    data = scenario_data(tmp_path)
    from flows.evaluate_model import evaluate_model
    from flows.retrain_detector import retrain_detector
    from flows.score_batch import score_batch
    from flows.train_detector import train_detector
    from registry.versions import client
    from tasks.feedback import feedback_counts, feedback_engine, record_feedback

    settings = get_settings()
    mlflow_client = client(settings.mlflow_tracking_uri)
    assert register_column_d_champion(data["train_frame"]) == 1

    # Without feedback: the challenger disagrees with the champion, and nothing says who is right.
    challenger = train_detector(data["train"], "m", detector="iforest")
    assert challenger["version"] == 2
    before = challenger["gate"]
    assert before["decision"] == "keep" and not before["labelled"], before["reasons"]
    assert challenger["alias"] == "challenger"

    # The champion scores a batch; analysts label what it flagged and the anomalies they found.
    scored = score_batch(data["batch"], "m")
    assert scored["version"] == 1
    engine = feedback_engine(settings.results_url)
    flags = (
        pd.read_sql(
            f"SELECT row_index, is_anomaly FROM detection_results WHERE batch_id = "
            f"'{scored['batch_id']}' AND model_version = 1",
            engine,
        )
        .set_index("row_index")["is_anomaly"]
        .astype(bool)
    )
    truth = data["truth"]
    labelled = sorted(
        set(np.flatnonzero(flags.sort_index().to_numpy())) | set(np.flatnonzero(truth))
    )
    path = tmp_path / "feedback.csv"
    pd.DataFrame(
        {"batch_id": scored["batch_id"], "row_index": labelled, "label": truth[labelled]}
    ).to_csv(path, index=False)
    recorded = record_feedback(engine, str(path), "ana")
    assert recorded["rows"] == len(labelled) and recorded["anomalies"] == int(truth.sum())
    (champion_counts,) = feedback_counts(engine)
    assert champion_counts.labelled_flagged == int(flags.sum())
    assert champion_counts.flagged_true == int((flags.sort_index().to_numpy() & (truth == 1)).sum())
    engine.dispose()

    # With feedback: the same challenger is judged on the labels and promoted.
    after = evaluate_model("m", 2)
    assert after["decision"] == "promote" and after["labelled"], after["reasons"]
    assert after["promoted"] and after["feedback_rows"] == len(labelled)
    metrics = after["metrics"]
    assert metrics["feedback.anomalies"] == truth.sum()
    assert (
        metrics["challenger.feedback_average_precision"]
        > metrics["champion.feedback_average_precision"]
    )
    assert any(r.startswith("ok: analyst feedback: average precision") for r in after["reasons"])
    tags = mlflow_client.get_model_version("m", "2").tags
    assert tags["gate.decision"] == "promote" and "analyst feedback" in tags["gate.reasons"]

    # Retrain: the labelled batch rows become the training labels.
    retrained = retrain_detector(
        "m", trigger="manual", detector="auto", time_budget_s=30, n_trials=4
    )
    assert retrained["status"] == "done" and retrained["version"] == 3
    assert retrained["label_column"] == "feedback_label"
    assert retrained["feedback"] == {
        "feedback_rows": len(labelled),
        "feedback_anomalies": int(truth.sum()),
        "unlabelled_rows_presumed_normal": 600 + 300 - len(labelled),
    }
    assert retrained["rows"] == 600 + 300  # every row of the window: unlabelled ones as normal
    v3 = mlflow_client.get_model_version("m", "3")
    assert v3.tags["label_column"] == "feedback_label"
    assert json.loads(v3.tags["feedback"])["feedback_rows"] == len(labelled)
    run_metrics = mlflow_client.get_run(v3.run_id).data.metrics
    assert run_metrics["holdout_rows"] == pytest.approx(round(900 * 0.3), abs=1)
    assert "roc_auc" in run_metrics and "average_precision" in run_metrics
    # The search ran on the labels (label-free only without them, or with too few anomalies).
    assert mlflow_client.get_run(v3.run_id).data.params["objective"] == "average_precision"
    # v3 trained on every labelled row: the gate leaves them out instead of judging on them.
    assert v3.tags["gate.labelled"] == "true"  # on the labelled hold-out of its window
    assert f"{len(labelled)} labelled row(s) left out" in v3.tags["gate.reasons"]
