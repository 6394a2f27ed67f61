"""Registry flows on the embedded store: gate, hand-made models, drift, retrain, rollback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from deployments.cli.registry import registry_app
from pynomaly.settings import get_settings

FEATURES = ["a", "b", "c", "d"]


def make_frame(seed: int, n: int, shift: float = 0.0, labelled: bool = True) -> pd.DataFrame:
    """Normal rows around 0 and ~8% anomalies far out; `shift` moves every row."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.08).astype(int)
    x = rng.normal(size=(n, len(FEATURES))) + 4.0 * y[:, None] * rng.choice([-1, 1], (n, 1))
    frame = pd.DataFrame(x + shift, columns=FEATURES)
    if labelled:
        frame["y"] = y
    return frame


@pytest.fixture
def files(tmp_path: Path, platform_home: Path) -> dict[str, str]:
    paths = {
        "train": make_frame(0, 400),
        "fresh": make_frame(1, 250, labelled=False),
        "shifted": make_frame(2, 250, shift=2.5, labelled=False),
    }
    out = {}
    for name, frame in paths.items():
        out[name] = str(tmp_path / f"{name}.csv")
        frame.to_csv(out[name], index=False)
    return out


def mlflow_client():
    from registry.versions import client

    return client(get_settings().mlflow_tracking_uri)


def register_by_hand(train_csv: str, rename: dict[str, str] | None = None) -> int:
    """A scikit-learn detector logged and registered with plain MLflow, outside the platform."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.ensemble import IsolationForest
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = pd.read_csv(train_csv).drop(columns=["y"]).rename(columns=rename or {})
    model = make_pipeline(
        StandardScaler(), IsolationForest(random_state=0, contamination=0.08)
    ).fit(x)
    mlflow.set_tracking_uri(get_settings().mlflow_tracking_uri)
    mlflow.set_experiment("pynomaly")
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(x.head(), model.decision_function(x.head())),
            skops_trusted_types=["sklearn.tree._tree.Tree"],
        )
    return int(mlflow.register_model(info.model_uri, "m").version)


def test_second_version_is_gated_and_rollback_restores_the_champion(files):
    from flows.train_detector import train_detector
    from registry.lineage import show_model

    first = train_detector(files["train"], "m", label_column="y")
    assert (first["version"], first["alias"]) == (1, "champion")
    second = train_detector(files["train"], "m", label_column="y")
    gate = second["gate"]
    # Same data and seed: the same model, so no metric drops and the gate promotes it.
    assert gate["decision"] == "promote" and gate["labelled"], gate["reasons"]
    assert second["alias"] == "champion" and gate["promoted"]
    assert gate["metrics"]["challenger.roc_auc"] == pytest.approx(
        gate["metrics"]["champion.roc_auc"]
    )
    assert "hold-out" in gate["evaluated_on"]

    shown = show_model(mlflow_client(), "m")
    v2 = shown["versions"][1]
    assert v2["gate"]["decision"] == "promote"
    assert any("average_precision" in r for r in v2["gate"]["reasons"])
    assert v2["dataset_sha256"] and v2["validation"] == "passed"
    assert [e["version"] for e in shown["champion_history"]] == [1, 2]

    runner = CliRunner()
    rolled = runner.invoke(registry_app, ["rollback", "m", "--json"])
    assert rolled.exit_code == 0, rolled.output
    assert json.loads(rolled.stdout) == {**json.loads(rolled.stdout), "version": 1, "previous": 2}
    shown = json.loads(runner.invoke(registry_app, ["show", "m", "--json"]).stdout)
    assert shown["aliases"]["champion"] == 1
    assert "rolled_back_at" in shown["versions"][1]
    nothing = runner.invoke(registry_app, ["rollback", "m"])
    assert nothing.exit_code == 2 and "nothing to roll back" in nothing.stderr


def test_beyond_the_row_cap_training_and_the_gate_use_the_same_stratified_sample(
    files, tmp_path, monkeypatch
):
    from flows.train_detector import train_detector

    # Anomalies barely apart: a hold-out ROC-AUC far from 1, which only the same rows repeat.
    rng = np.random.default_rng(4)
    y = (rng.random(3_000) < 0.08).astype(int)
    x = rng.normal(size=(3_000, len(FEATURES))) + 1.0 * y[:, None]
    big = pd.DataFrame(x, columns=FEATURES).assign(y=y)
    path = tmp_path / "big.csv"
    big.to_csv(path, index=False)
    monkeypatch.setenv("PYNOMALY_TRAIN_MAX_ROWS", "1000")
    get_settings.cache_clear()

    first = train_detector(str(path), "s", label_column="y")
    assert (first["rows"], first["sample_rows"]) == (3_000, 1_000)
    assert (first["metrics"]["fit_rows"], first["metrics"]["holdout_rows"]) == (700, 300)
    # Stratified: the sample holds the data's anomaly share (to rounding), in fit and hold-out.
    assert first["metrics"]["contamination"] == pytest.approx(big["y"].mean(), abs=0.002)
    assert mlflow_client().get_model_version("s", "1").tags["train_sample_rows"] == "1000"
    assert 0.6 < first["metrics"]["roc_auc"] < 0.95, first["metrics"]

    # The gate redraws the same sample and rebuilds training's hold-out from it: the champion's
    # ROC-AUC there is the one its training measured.
    gate = train_detector(str(path), "s", label_column="y")["gate"]
    sample = "a sample of 1000 of its 3000 rows, labelled hold-out of 300 rows"
    assert sample in gate["evaluated_on"]
    assert gate["metrics"]["champion.roc_auc"] == pytest.approx(
        first["metrics"]["roc_auc"], abs=1e-5
    )


def test_hand_registered_model_is_gated_and_a_wrong_signature_is_rejected(files):
    from flows.evaluate_model import evaluate_model
    from flows.train_detector import train_detector

    train_detector(files["train"], "m", label_column="y")
    version = register_by_hand(files["train"])
    result = evaluate_model("m", version)
    assert result["label_column"] == "y" and result["labelled"]
    assert result["score_convention"].startswith("-IsolationForest.decision_function")
    assert result["threshold"] == 0.0 and result["threshold_source"] == "model"
    assert result["decision"] == "promote", result["reasons"]
    assert result["promoted"]

    broken = register_by_hand(files["train"], rename={"a": "not_a_column"})
    runner = CliRunner()
    failed = runner.invoke(registry_app, ["evaluate", "m", "--version", str(broken)])
    assert failed.exit_code == 2
    assert "signature does not fit" in failed.stderr and "not_a_column" in failed.stderr
    tags = mlflow_client().get_model_version("m", str(broken)).tags
    assert tags["gate.decision"] == "reject"
    listed = json.loads(runner.invoke(registry_app, ["list", "--json"]).stdout)
    assert listed["models"][0]["champion"] == version


def test_drift_starts_a_retrain_with_a_cooldown(files, monkeypatch):
    from flows.check_drift import check_drift
    from flows.train_detector import train_detector

    train_detector(files["train"], "m", label_column="y")

    calm = check_drift(files["fresh"], "m", trigger="subflow")
    assert not calm["drift_detected"] and calm["retrain"] == {"status": "not needed"}

    drifted = check_drift(files["shifted"], "m", trigger="subflow")
    assert drifted["drift_detected"] and drifted["drift_share"] >= 0.5
    assert set(drifted["columns"]) == set(FEATURES)
    assert drifted["score_drift"]["drifted"]
    assert drifted["report_uri"].endswith("drift/report.html")
    retrain = drifted["retrain"]
    assert retrain["status"] == "done" and retrain["version"] == 2
    assert retrain["label_column"] is None  # the batch has no labels: trained label-free
    assert len(retrain["window"]) == 2
    tags = mlflow_client().get_model_version("m", "2").tags
    assert tags["retrain_trigger"] == "drift" and "gate.decision" in tags

    again = check_drift(files["shifted"], "m", trigger="subflow")
    assert again["retrain"]["status"] == "skipped" and "cooldown" in again["retrain"]["reason"]

    # With a server the flow emits an event for the automation instead of retraining itself.
    monkeypatch.setenv("PYNOMALY_RETRAIN_COOLDOWN_HOURS", "0")
    monkeypatch.setenv("PYNOMALY_MAX_RETRAINS_PER_DAY", "10")
    get_settings.cache_clear()
    event = check_drift(files["shifted"], "m", trigger="event")
    assert event["retrain"] == {"status": "event emitted", "event": "pynomaly.drift.detected"}
    # v2 was trained on a window of the training set and the shifted batch: 400 + 250 rows.
    assert (event["reference_rows"], event["reference_sample_rows"]) == (650, 650)
    assert (event["current_rows"], event["current_sample_rows"]) == (250, 250)

    # A batch larger than the drift sample is compared through a uniform sample of it.
    big = Path(files["shifted"]).with_name("big.csv")
    make_frame(3, 3_000, shift=2.5, labelled=False).to_csv(big, index=False)
    monkeypatch.setenv("PYNOMALY_DRIFT_SAMPLE_ROWS", "1000")
    get_settings.cache_clear()
    sampled = check_drift(str(big), "m", retrain_on_drift=False)
    assert sampled["drift_detected"] and sampled["retrain"] == {"status": "not requested"}
    assert (sampled["current_rows"], sampled["current_sample_rows"]) == (3_000, 1_000)
    assert (sampled["reference_rows"], sampled["reference_sample_rows"]) == (650, 650)


def test_a_failed_retrain_is_recorded_and_holds_no_cooldown(files, tmp_path, monkeypatch):
    from flows.retrain_detector import retrain_detector
    from flows.train_detector import train_detector
    from pynomaly.errors import InputError
    from registry.promotion import read_retrains

    train_detector(files["train"], "m", label_column="y")
    missing = str(tmp_path / "not-there.csv")
    with pytest.raises(InputError, match="not-there.csv"):
        retrain_detector("m", missing, trigger="schedule", time_budget_s=5)
    assert [e["status"] for e in read_retrains(mlflow_client(), "m")] == ["failed"]

    # The failure held no cooldown: the next scheduled retrain runs, and then it holds one.
    done = retrain_detector("m", files["fresh"], trigger="schedule", time_budget_s=5)
    assert done["status"] == "done" and done["version"] == 2
    assert [e["status"] for e in read_retrains(mlflow_client(), "m")] == ["failed", "done"]
    # Two attempts today, one failed: the default cap of 2 counts both.
    held = retrain_detector("m", files["fresh"], trigger="schedule", time_budget_s=5)
    assert held["status"] == "skipped" and "2 retrain(s) in the last 24 h" in held["reason"]
    monkeypatch.setenv("PYNOMALY_MAX_RETRAINS_PER_DAY", "5")
    get_settings.cache_clear()
    held = retrain_detector("m", files["fresh"], trigger="schedule", time_budget_s=5)
    assert held["status"] == "skipped" and "cooldown" in held["reason"]
