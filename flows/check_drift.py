"""Flow: drift of a new batch against the champion's training snapshot; retrain when it drifts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from pynomaly.settings import get_settings
from tasks.drift import rows_compared
from tasks.steps import compare_with_training_data, load_source, log_drift_run, resolve_model
from tasks.store import ArtifactStore

DRIFT_EVENT = "pynomaly.drift.detected"


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
    result, html = compare_with_training_data(
        store,
        resolved,
        batch,
        settings.drift_threshold,
        uri,
        settings.drift_sample_rows,
        settings.chunk_rows,
    )
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
            f"{result['score_drift'].get('psi', float('nan')):.3f}. Rows compared: "
            f"{rows_compared(result)}.\n\n"
            f"[Evidently report]({logged['report_uri']}) in MLflow run `{logged['run_id']}`."
        ),
    )

    # Retrain: a sub-flow when embedded; an event for the server's automation otherwise
    retrain: dict[str, Any] = {"status": "not needed"}
    if result["drift_detected"] and not retrain_on_drift:
        retrain = {"status": "not requested"}
    elif result["drift_detected"]:
        mode = trigger if trigger != "auto" else ("event" if settings.prefect_server else "subflow")
        if mode == "subflow":
            from flows.retrain_detector import retrain_detector

            retrain = retrain_detector(name, source=batch.snapshot_uri, trigger="drift")
        else:
            ok, why = retrain_allowed(
                read_retrains(client(uri), name),
                datetime.now(UTC),
                settings.retrain_cooldown_hours,
                settings.max_retrains_per_day,
            )
            if ok:
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
