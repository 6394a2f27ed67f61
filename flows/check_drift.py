"""Flow: drift of a new batch against the champion's training snapshot; retrain when it drifts."""

from __future__ import annotations

import os
from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pynomaly.errors import InputError
from pynomaly.settings import get_settings
from tasks.ingest import Manifest
from tasks.steps import load_source, resolve_model
from tasks.store import ArtifactStore

DRIFT_EVENT = "pynomaly.drift.detected"

# The tasks below wrap plain functions (tasks/drift.py, registry/) like tasks/steps.py does.


@task(name="compare_with_training_data", cache_policy=NO_CACHE)
def compare_with_training_data(
    store: ArtifactStore, resolved: Any, batch: Manifest, drift_threshold: float
) -> tuple[dict[str, Any], str]:
    """Evidently column drift and the champion's score drift, training snapshot vs batch."""
    from registry.gate import check_interface, load_scorer, score_frame
    from tasks.drift import detect_drift
    from tasks.ingest import load_manifest, load_snapshot

    dataset, sha = resolved.tags.get("dataset"), resolved.tags.get("dataset_sha256")
    if not sha and resolved.tags.get("reference_snapshot"):
        # A hand-made model: the data the gate judged it on stands in for its training data.
        dataset, _, sha = resolved.tags["reference_snapshot"].partition("/")
    if not dataset or not sha:
        raise InputError(
            f"{resolved.name} v{resolved.version} has no training snapshot tags "
            "(dataset, dataset_sha256) and was never evaluated on a snapshot: "
            f"run `pynomaly registry evaluate {resolved.name} --version {resolved.version}`"
        )
    reference = load_snapshot(store, load_manifest(store, dataset, sha))
    current = load_snapshot(store, batch)
    scorer = load_scorer(resolved.uri, resolved.tags)
    check_interface(scorer, current, f"batch {batch.source}")
    result, html = detect_drift(
        reference,
        current,
        scorer.columns,
        drift_threshold=drift_threshold,
        reference_scores=score_frame(scorer, reference)[0],
        current_scores=score_frame(scorer, current)[0],
        score_threshold=scorer.threshold,
    )
    return result.as_dict(), html


@task(name="log_drift_run", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def log_drift_run(
    tracking_uri: str, experiment_id: str, resolved: Any, batch: Manifest, result: dict, html: str
) -> dict[str, str]:
    """An MLflow run holding the HTML report and the drift numbers."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    tags = {
        "pynomaly.kind": "drift",
        "model": resolved.name,
        "model_version": str(resolved.version),
        "reference_sha256": resolved.tags.get("dataset_sha256")
        or resolved.tags.get("reference_snapshot", ""),
        "batch_sha256": batch.sha256,
        "drift_detected": str(result["drift_detected"]).lower(),
    }
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"drift-{resolved.name}", tags=tags
    ) as run:
        metrics = {
            "drift_share": result["drift_share"],
            "drifted_columns": result["drifted_columns"],
        }
        metrics.update(
            {f"score_{k}": v for k, v in result["score_drift"].items() if isinstance(v, float)}
        )
        mlflow.log_metrics(metrics)
        mlflow.log_text(html, "drift/report.html")
        mlflow.log_dict(result, "drift/drift.json")
        uri = f"{run.info.artifact_uri.rstrip('/')}/drift/report.html"
    return {"run_id": run.info.run_id, "report_uri": uri}


def server_mode() -> bool:
    """Whether flows talk to a real Prefect server (events reach automations) or run embedded."""
    return bool(os.environ.get("PREFECT_API_URL"))


@flow(name="check-drift", log_prints=True)
def check_drift(
    source: str,
    model: str,
    alias: str | None = None,
    retrain_on_drift: bool = True,
    trigger: Literal["auto", "subflow", "event"] = "auto",
    query: str | None = None,
    delimiter: str = ",",
) -> dict[str, Any]:
    """Compare a batch with the champion's training data; on drift start (or ask for) a retrain."""
    from registry.promotion import read_retrains, retrain_allowed
    from registry.tracking import ensure_experiment
    from registry.versions import client, parse_model_ref

    settings = get_settings()
    settings.export_client_environment()
    store = ArtifactStore(settings.artifact_store, settings.s3_endpoint_url)
    uri = settings.mlflow_tracking_uri
    name, ref_alias = parse_model_ref(model)
    resolved = resolve_model(uri, name, alias or ref_alias, None)

    # Ingest: the batch is snapshotted like any scored batch
    batch = load_source(source, f"{name}-batches", store, query, delimiter, settings.chunk_rows)

    # Compare
    result, html = compare_with_training_data(store, resolved, batch, settings.drift_threshold)
    experiment_id = ensure_experiment(settings.experiment, uri, settings.artifact_store)
    logged = log_drift_run(uri, experiment_id, resolved, batch, result, html)
    drifted = [c for c, r in result["columns"].items() if r["drifted"]]
    create_markdown_artifact(
        key="drift-report",
        markdown=(
            f"## Drift of batch `{batch.sha256[:12]}` vs `{name}` v{resolved.version}: "
            f"{'**drift**' if result['drift_detected'] else 'no drift'}\n\n"
            f"Drifted columns {result['drifted_columns']}/{len(result['columns'])} "
            f"(share {result['drift_share']:.2f}, threshold {result['drift_threshold']:g})"
            f"{': ' + ', '.join(drifted[:20]) if drifted else ''}. Score PSI "
            f"{result['score_drift'].get('psi', float('nan')):.3f}.\n\n"
            f"[Evidently report]({logged['report_uri']}) in MLflow run `{logged['run_id']}`."
        ),
    )

    # Retrain: a sub-flow when embedded; an event for the server's automation otherwise
    retrain: dict[str, Any] = {"status": "not needed"}
    if result["drift_detected"] and not retrain_on_drift:
        retrain = {"status": "not requested"}
    elif result["drift_detected"]:
        mode = trigger if trigger != "auto" else ("event" if server_mode() else "subflow")
        if mode == "subflow":
            from flows.retrain_detector import retrain_detector

            retrain = retrain_detector(name, source=batch.snapshot_uri, trigger="drift")
        else:
            from datetime import UTC, datetime

            ok, why = retrain_allowed(
                read_retrains(client(uri), name),
                datetime.now(UTC),
                settings.retrain_cooldown_hours,
                settings.max_retrains_per_day,
            )
            if ok:
                from prefect.events import emit_event

                emit_event(
                    event=DRIFT_EVENT,
                    resource={
                        "prefect.resource.id": f"pynomaly.model.{name}",
                        "prefect.resource.name": name,
                        "pynomaly.model": name,
                    },
                    payload={
                        "version": resolved.version,
                        "batch_sha256": batch.sha256,
                        "batch_snapshot": batch.snapshot_uri,
                        "drift_share": result["drift_share"],
                        "score_psi": result["score_drift"].get("psi"),
                        "report": logged["report_uri"],
                    },
                )
                retrain = {"status": "event emitted", "event": DRIFT_EVENT}
            else:
                retrain = {"status": "skipped", "reason": why}

    return {
        "model": name,
        "version": resolved.version,
        "batch_sha256": batch.sha256,
        **result,
        "mlflow_run_id": logged["run_id"],
        "report_uri": logged["report_uri"],
        "retrain": retrain,
    }


if __name__ == "__main__":
    import sys

    print(check_drift(sys.argv[1], sys.argv[2], retrain_on_drift=False))
