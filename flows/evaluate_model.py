"""Flow: gate any registered version (platform-trained or logged by hand) against the champion."""

from __future__ import annotations

import json
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from pynomaly.settings import get_settings
from tasks.steps import (
    gate_version,
    load_evaluation_data,
    load_feedback_rows,
    promote_version,
)
from tasks.store import ArtifactStore


@flow(name="evaluate-model", log_prints=True)
def evaluate_model(
    model: str,
    version: int,
    data: str | None = None,
    label_column: str | None = None,
    expected_share: float | None = None,
    promote: bool = True,
    query: str | None = None,
    delimiter: str = ",",
) -> dict[str, Any]:
    """Check a version's interface, gate it against the champion and promote it if it passes."""
    from registry.promotion import PromotionConflict, record_decision
    from registry.versions import client

    settings = get_settings()
    settings.export_client_environment()
    uri = settings.mlflow_tracking_uri
    store = ArtifactStore(settings.artifact_store, settings.s3_endpoint_url)

    # Evaluation data
    batch = load_evaluation_data(
        store,
        uri,
        model,
        version,
        data,
        label_column,
        query,
        delimiter,
        settings.chunk_rows,
        settings.train_max_rows,
    )
    champion = batch["champion"]
    champion_version = None if champion is None else champion.version

    # Feedback: rows analysts labelled on the model's batches, less those either version fit on
    compared = [v for v in (batch["target"], champion) if v is not None]
    feedback = load_feedback_rows(
        settings.results_url,
        store,
        model,
        [
            f"{v.tags['dataset']}/{v.tags['dataset_sha256']}"
            for v in compared
            if v.tags.get("dataset") and v.tags.get("dataset_sha256")
        ],
        [v.tags["label_column"] for v in compared if v.tags.get("label_column")],
        settings.chunk_rows,
    )

    # Gate
    gate = gate_version(uri, model, batch, expected_share, settings.gate_margin, feedback)

    # Promote
    promoted = None
    if promote and gate["decision"] == "promote" and champion_version != version:
        try:
            promoted = promote_version(
                uri,
                model,
                version,
                champion_version,
                "gate: promote",
                settings.home_dir,
                settings.prefect_server,
            )
        except PromotionConflict as exc:
            gate["decision"] = "keep"
            gate["reasons"].insert(0, f"needs review: {exc}")
            record_decision(
                client(uri),
                model,
                version,
                {"gate.decision": "keep", "gate.reasons": json.dumps(gate["reasons"])},
            )

    result = {
        "model": model,
        "version": version,
        "evaluated_on": batch["where"],
        "label_column": batch["label_column"],
        "champion_before": champion_version,
        "promoted": bool(promoted and promoted["changed"]),
        "feedback_rows": 0 if feedback is None else len(feedback.labels),
        **gate,
    }
    create_markdown_artifact(
        key="gate-decision",
        markdown=(
            f"## Gate: `{model}` v{version} vs champion v{champion_version} -> "
            f"**{gate['decision']}**\n\nEvaluated on {batch['where']}; threshold "
            f"{gate['threshold']:.6g} ({gate['threshold_source']}).\n\n"
            + "\n".join(f"- {r}" for r in gate["reasons"])
        ),
    )
    return result


if __name__ == "__main__":
    import sys

    print(evaluate_model(sys.argv[1], int(sys.argv[2]), *(sys.argv[3:4])))
