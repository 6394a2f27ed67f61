"""Train a detector by hand, register it with plain MLflow, and print how to gate it.

    python examples/register_own_model.py --data .pynomaly/demo/train.csv --name breast-cancer

Any scikit-learn outlier detector, PyOD estimator or pyfunc model returning one score per row
works; log it with a signature so the platform can check it fits the data. Pynomaly's scores are
higher = more anomalous; scikit-learn's decision_function is higher = normal, and the platform
negates it (threshold 0, exactly where sklearn's predict says -1).
"""

from __future__ import annotations

import argparse

import mlflow
import pandas as pd
from mlflow.models import infer_signature
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def main() -> None:
    """Fit, log, register; print the `pynomaly registry evaluate` command."""
    from pynomaly.settings import get_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=".pynomaly/demo/train.csv", help="Training CSV.")
    parser.add_argument("--name", default="breast-cancer", help="Registered model name.")
    parser.add_argument("--label-column", default="is_malignant", help="Dropped before fitting.")
    parser.add_argument(
        "--wrong-signature",
        action="store_true",
        help="Rename a column before fitting, to see the platform reject the model.",
    )
    args = parser.parse_args()

    frame = pd.read_csv(args.data)
    features = frame.drop(columns=[args.label_column], errors="ignore")
    if args.wrong_signature:
        features = features.rename(columns={features.columns[0]: "no_such_column"})
    model = make_pipeline(
        StandardScaler(), IsolationForest(n_estimators=200, contamination=0.1, random_state=1)
    ).fit(features)

    # Plain MLflow from here on: the same tracking store the platform uses.
    settings = get_settings()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    experiment = "hand-made-models"
    if mlflow.get_experiment_by_name(experiment) is None:
        location = settings.artifact_store.rstrip("/") + "/mlflow"
        if not location.startswith("s3://"):
            from pathlib import Path

            location = Path(location).resolve().as_uri()
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"hand-made-{args.name}"):
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(
                features.head(20), model.decision_function(features.head(20))
            ),
            # MLflow saves sklearn models with skops, which asks which non-builtin types to trust.
            skops_trusted_types=["sklearn.tree._tree.Tree"],
        )
    version = mlflow.register_model(info.model_uri, args.name, tags={"registered_by": "hand"})
    print(f"registered {args.name} v{version.version} ({info.model_uri})")
    print(f"pynomaly registry evaluate {args.name} --version {version.version}")


if __name__ == "__main__":
    main()
