"""Flow: retrain a model on new data plus a window of its earlier snapshots; register and gate."""

from __future__ import annotations

import json
import tempfile
from typing import Any, Literal

from prefect import flow

from pynomaly.settings import get_settings
from tasks.steps import (
    combine_window,
    find_new_batches,
    load_feedback_labels,
    load_source,
    resolve_model,
)
from tasks.store import ArtifactStore
from tasks.window import WINDOW_TAG, choose_window, earlier_snapshots


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
    from flows.train_detector import train_detector
    from registry.promotion import claim_retrain, repair_model, retrain_attempt
    from registry.versions import client
    from tasks.evaluate import expected_share_of

    settings = get_settings()
    settings.export_client_environment()
    store = ArtifactStore(settings.artifact_store, settings.s3_endpoint_url)
    uri = settings.mlflow_tracking_uri
    mlflow_client = client(uri)
    # Versions a killed train left never count in the window (the train sub-flow ends its runs)
    repair_model(
        mlflow_client, uri, model, settings.home_dir, prefect_server=settings.prefect_server
    )
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
        prefect_server=settings.prefect_server,
    )
    if not ok:
        print(f"retrain of {model} skipped: {claim}")
        return {"status": "skipped", "reason": claim, "model": model, "trigger": trigger}
    # A failed attempt counts against the daily cap but holds no cooldown.
    with retrain_attempt(
        mlflow_client, uri, model, claim, settings.home_dir, settings.prefect_server
    ) as attempt:
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
            path, label, rows, used, window_rows = combine_window(
                store,
                parts,
                label,
                folder,
                feedback,
                settings.train_max_rows,
                settings.chunk_rows,
            )
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
        tags = {WINDOW_TAG: json.dumps(parts), "retrain_trigger": trigger}
        tags |= {"feedback": json.dumps(used)} if used else {}
        tags["window_policy"] = f"{window}:{window_size}"
        for tag, value in tags.items():
            mlflow_client.set_model_version_tag(model, str(trained["version"]), tag, value)
        return {
            "status": "done",
            "model": model,
            "trigger": trigger,
            "version": trained["version"],
            "alias": trained["alias"],
            "gate": trained["gate"].get("decision"),
            "window": parts,
            "rows": rows,
            "window_rows": window_rows,
            "label_column": label,
            "feedback": used,
        }


if __name__ == "__main__":
    import sys

    print(
        retrain_detector(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None, trigger="manual")
    )
