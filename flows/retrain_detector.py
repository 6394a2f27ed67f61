"""Flow: retrain a model on new data plus a window of its earlier snapshots; register and gate."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pynomaly.errors import InputError
from pynomaly.settings import get_settings
from tasks.steps import load_feedback_labels, load_source, resolve_model
from tasks.store import ArtifactStore

WINDOW_TAG = "window_snapshots"


def earlier_snapshots(versions: list[Any]) -> list[str]:
    """`dataset/sha256` of every snapshot the model's versions were trained on, oldest first."""
    seen: list[str] = []
    for mv in sorted(versions, key=lambda v: int(v.version)):
        tags = dict(mv.tags or {})
        parts = json.loads(tags[WINDOW_TAG]) if tags.get(WINDOW_TAG) else None
        if parts is None and tags.get("dataset_sha256"):
            parts = [f"{tags['dataset']}/{tags['dataset_sha256']}"]
        for part in parts or []:
            if part not in seen:
                seen.append(part)
    return seen


def choose_window(earlier: list[str], new: list[str], policy: str, size: int) -> list[str]:
    """Snapshots to train on: all (append) or the newest `size` (sliding), new data always in."""
    chosen = [s for s in earlier if s not in new] + new
    if policy == "append":
        return chosen
    if policy != "sliding":
        raise InputError(f"unknown window policy {policy!r}: use sliding or append")
    return chosen[-max(size, len(new)) :]


@task(name="find_new_batches", cache_policy=NO_CACHE)
def find_new_batches(store: ArtifactStore, model: str, used: list[str], limit: int) -> list[str]:
    """The newest scored/checked batch snapshots of the model not trained on yet."""
    from tasks.ingest import Manifest

    prefix = f"datasets/{model}-batches/"
    manifests = [
        Manifest(**json.loads(store.get_bytes(key)))
        for key in store.list(prefix)
        if key.endswith(".json")
    ]
    fresh = [m for m in manifests if f"{m.dataset}/{m.sha256}" not in used]
    fresh.sort(key=lambda m: m.created_at)
    return [f"{m.dataset}/{m.sha256}" for m in fresh[-limit:]]


@task(name="combine_window", cache_policy=NO_CACHE)
def combine_window(
    store: ArtifactStore,
    window: list[str],
    label_column: str | None,
    folder: str,
    feedback: Any = None,
) -> tuple[str, str | None, int, dict[str, int]]:
    """One Parquet file of the window's rows; labels kept only if every snapshot has them.

    With enough analyst feedback on the window's batches (`feedback`: the model's newest label
    per row and its snapshot), the feedback sets labels; unlabelled rows count as normal.
    """
    import pandas as pd

    from tasks.feedback import apply_feedback_labels
    from tasks.ingest import load_manifest, load_snapshot

    frames = []
    for part in window:
        dataset, sha = part.split("/", 1)
        frames.append(load_snapshot(store, load_manifest(store, dataset, sha)))
    used: dict[str, int] = {}
    labelled = (
        None
        if feedback is None or feedback.empty
        else apply_feedback_labels(list(zip(window, frames, strict=True)), feedback, label_column)
    )
    if labelled is not None:
        frames, label_column, used = labelled
    elif label_column and not all(label_column in f.columns for f in frames):
        # New batches come without labels: the whole window trains label-free.
        frames = [f.drop(columns=[label_column], errors="ignore") for f in frames]
        label_column = None
    columns = list(frames[0].columns)
    for part, frame in zip(window, frames, strict=True):
        if set(frame.columns) != set(columns):
            other = set(frame.columns) ^ set(columns)
            raise InputError(
                f"snapshot {part} has other columns than the rest of the window: "
                f"{', '.join(sorted(map(str, other)))}"
            )
    combined = pd.concat([f[columns] for f in frames], ignore_index=True)
    path = Path(folder) / "window.parquet"
    combined.to_parquet(path, index=False)
    return str(path), label_column, len(combined), used


@flow(name="retrain-detector", log_prints=True)
def retrain_detector(
    model: str,
    source: str | None = None,
    window: Literal["sliding", "append"] = "sliding",
    window_size: int = 3,
    trigger: Literal["schedule", "drift", "manual"] = "schedule",
    detector: str | None = None,
    label_column: str | None = None,
    time_budget_s: float = 60.0,
    n_trials: int | None = None,
    query: str | None = None,
    delimiter: str = ",",
) -> dict[str, Any]:
    """Retrain on new data (or the newest batches) plus earlier snapshots; register and gate."""
    from flows.evaluate_model import expected_share_of
    from flows.train_detector import train_detector
    from registry.promotion import claim_retrain, repair_model, retrain_attempt
    from registry.versions import client

    settings = get_settings()
    settings.export_client_environment()
    store = ArtifactStore(settings.artifact_store, settings.s3_endpoint_url)
    uri = settings.mlflow_tracking_uri
    mlflow_client = client(uri)
    # Versions a killed train left never count in the window (the train sub-flow ends its runs)
    repair_model(mlflow_client, uri, model, settings.home_dir)
    champion = resolve_model(uri, model, None, None)
    dataset = champion.tags.get("dataset") or model

    # Cooldown and daily cap (manual retrains are never held back)
    ok, claim = claim_retrain(
        mlflow_client,
        uri,
        model,
        trigger=trigger,
        lock_dir=settings.home_dir,
        cooldown_hours=settings.retrain_cooldown_hours,
        max_per_day=settings.max_retrains_per_day,
        enforce=trigger != "manual",
    )
    if not ok:
        print(f"retrain of {model} skipped: {claim}")
        return {"status": "skipped", "reason": claim, "model": model, "trigger": trigger}
    # A failed attempt counts against the daily cap but holds no cooldown.
    with retrain_attempt(mlflow_client, uri, model, claim, settings.home_dir) as attempt:
        # Ingest: new data, or the batches checked/scored since the last training
        versions = mlflow_client.search_model_versions(f"name = '{model}'")
        earlier = earlier_snapshots(versions)
        if source:
            manifest = load_source(source, dataset, store, query, delimiter, settings.chunk_rows)
            new = [f"{manifest.dataset}/{manifest.sha256}"]
        else:
            new = find_new_batches(store, model, earlier, window_size)
            if not new:
                attempt["status"] = "skipped"
                return {"status": "skipped", "reason": "no new data", "model": model}

        # Window
        parts = choose_window(earlier, new, window, window_size)
        # A hand-made champion has no label tag: the platform-trained versions know the column.
        known = [(mv.tags or {}).get("label_column") for mv in versions]
        label = (
            label_column
            or champion.tags.get("label_column")
            or next((c for c in reversed(known) if c), None)
        )

        # Feedback: analysts' labels of the window's batch rows become training labels
        feedback = load_feedback_labels(settings.results_url, store, model)

        # Train, register and gate: the train flow's own path, on the window's rows
        with tempfile.TemporaryDirectory() as folder:
            path, label, rows, used = combine_window(store, parts, label, folder, feedback)
            trained = train_detector(
                path,
                model,
                dataset=dataset,
                label_column=label,
                detector=detector or champion.tags.get("detector") or "iforest",
                contamination=expected_share_of(mlflow_client, [champion], None),
                time_budget_s=time_budget_s,
                n_trials=n_trials,
            )
        version = str(trained["version"])
        mlflow_client.set_model_version_tag(model, version, WINDOW_TAG, json.dumps(parts))
        mlflow_client.set_model_version_tag(model, version, "retrain_trigger", trigger)
        if used:
            mlflow_client.set_model_version_tag(model, version, "feedback", json.dumps(used))
        mlflow_client.set_model_version_tag(
            model, version, "window_policy", f"{window}:{window_size}"
        )
        return {
            "status": "done",
            "model": model,
            "trigger": trigger,
            "version": trained["version"],
            "alias": trained["alias"],
            "gate": trained["gate"].get("decision"),
            "window": parts,
            "rows": rows,
            "label_column": label,
            "feedback": used,
        }


if __name__ == "__main__":
    import sys

    print(
        retrain_detector(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None, trigger="manual")
    )
