"""Champion samples: a few input rows per champion and the scores it gave them, recorded at
backup time and re-scored after a restore (the proof that models load and score the same).

MLflow takes the tracking URI explicitly (MlflowClient(tracking_uri=), download_artifacts(...,
tracking_uri=)): the model version is downloaded and loaded from that local copy."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

SAMPLE_ROWS = 5


def _load_version(tracking_uri: str, name: str, version: int, folder: Path) -> tuple[Any, str]:
    """A model version loaded from a local download, and that download's path."""
    import mlflow
    from mlflow import MlflowClient

    # Resolved here rather than as models:/name/version, which MLflow 3 looks up in the
    # process-wide registry whatever URI download_artifacts is given.
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version_download_uri(name, str(version)),
        dst_path=str(folder),
        tracking_uri=tracking_uri,
    )
    return mlflow.pyfunc.load_model(local), local


def _scores(model: Any, frame: Any) -> list[float]:
    import numpy as np
    import pandas as pd

    out = model.predict(frame)
    if isinstance(out, pd.DataFrame) and "score" in out.columns:
        out = out["score"]
    return [float(v) for v in np.asarray(out, dtype=float).ravel()]


def _frame(sample: dict[str, Any]) -> Any:
    import pandas as pd

    frame = pd.DataFrame(sample["data"], columns=sample["columns"])
    return frame.astype(sample["dtypes"])


def record_champion_samples(
    tracking_uri: str, champions: list[dict[str, Any]], rows: int = SAMPLE_ROWS
) -> list[dict[str, Any]]:
    """Per champion: its input example's first rows and the scores the model gives them."""
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, champ in enumerate(champions):
            try:
                samples.append(_champion_sample(tracking_uri, champ, Path(tmp) / str(i), rows))
            except Exception as exc:  # noqa: BLE001 - one broken champion must not stop a backup
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                reason = f"does not load or score: {type(exc).__name__}: {first}".rstrip(": ")
                samples.append({**champ, "sample": None, "reason": reason, "failed": True})
    return samples


def _champion_sample(tracking_uri: str, champ: dict[str, Any], folder: Path, rows: int) -> dict:
    """One champion's sample rows and scores (raises when the champion cannot load or score)."""
    from mlflow.models import Model

    model, local = _load_version(tracking_uri, champ["model"], champ["version"], folder)
    example = Model.load(local).load_input_example(local)
    if example is None:
        return {**champ, "sample": None, "reason": "no input example logged"}
    example = example.head(rows)
    sample = {
        "columns": [str(c) for c in example.columns],
        "dtypes": {str(c): str(t) for c, t in example.dtypes.items()},
        "data": example.to_numpy().tolist(),
    }
    # Score the rows as they come back from JSON, exactly as the check will later
    # (JSON keeps every float's repr, so nothing is rounded on the way).
    sample = json.loads(json.dumps(sample))
    return {**champ, "sample": sample, "scores": _scores(model, _frame(sample))}


def check_champion_samples(tracking_uri: str, samples: list[dict[str, Any]]) -> list[str]:
    """Problems found re-scoring each recorded sample with the restored champion."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, rec in enumerate(samples):
            label = f"{rec['model']} v{rec['version']}"
            if rec.get("sample") is None:
                continue
            try:
                folder = Path(tmp) / str(i)
                model, _ = _load_version(tracking_uri, rec["model"], rec["version"], folder)
            except Exception as exc:
                problems.append(f"champion {label} does not load: {type(exc).__name__}: {exc}")
                continue
            got = _scores(model, _frame(rec["sample"]))
            if got != rec["scores"]:
                problems.append(
                    f"champion {label} scores {got} where the backup recorded {rec['scores']}"
                )
    return problems
