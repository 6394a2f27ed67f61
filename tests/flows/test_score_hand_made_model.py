"""A model a data scientist registered by hand scores batches like a platform-trained one."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from sklearn.ensemble import IsolationForest

from deployments.demo import LABEL, build_demo_files
from flows.evaluate_model import evaluate_model
from flows.score_batch import score_batch
from flows.train_detector import train_detector
from pynomaly.settings import get_settings
from tasks.results import results_engine


def test_hand_made_sklearn_champion_scores_raw_scores(platform_home) -> None:
    files = build_demo_files(platform_home / "demo")
    train_detector(str(files["train"]), "bc", label_column=LABEL)
    features = pd.read_csv(files["train"]).drop(columns=[LABEL])
    forest = IsolationForest(n_estimators=50, contamination=0.1, random_state=0).fit(features)
    settings = get_settings()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("pynomaly").experiment_id):
        info = mlflow.sklearn.log_model(
            forest,
            name="model",
            signature=infer_signature(features.head(5), forest.decision_function(features.head(5))),
            skops_trusted_types=["sklearn.tree._tree.Tree"],
        )
    version = int(mlflow.register_model(info.model_uri, "bc").version)
    # Gate and promote it regardless of the comparison, then score with it as champion.
    evaluate_model("bc", version, label_column=LABEL)
    from registry.promotion import promote
    from registry.versions import CHAMPION, aliases_of, client

    mlflow_client = client(settings.mlflow_tracking_uri)
    champion = aliases_of(mlflow_client, "bc")[CHAMPION]
    if champion != version:
        promote(
            mlflow_client,
            settings.mlflow_tracking_uri,
            "bc",
            version,
            expected_champion=champion,
            lock_dir=settings.home_dir,
            reason="test",
            force=True,
        )

    out = score_batch(str(files["batch"]), "bc", batch_id="hand")
    batch = pd.read_csv(files["batch"])
    # sklearn: decision_function is higher = normal; the platform stores its negation and
    # flags exactly the rows sklearn's predict calls outliers.
    assert out["version"] == version and out["rows_scored"] == len(batch)
    assert out["anomalies"] == int((forest.predict(batch) == -1).sum())
    engine = results_engine(settings.results_url)
    stored = pd.read_sql("SELECT row_index, score FROM detection_results ORDER BY 1", engine)
    engine.dispose()
    np.testing.assert_allclose(stored["score"], -forest.decision_function(batch))
