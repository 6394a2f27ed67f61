"""Judge a registered version against the champion: its evaluation data, the gate, promotion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pynomaly.errors import InputError
from tasks.store import ArtifactStore


def load_evaluation_data(
    store: ArtifactStore,
    tracking_uri: str,
    model: str,
    version: int,
    data: str | None,
    label_column: str | None,
    query: str | None,
    delimiter: str,
    chunk_rows: int,
    max_rows: int,
) -> dict[str, Any]:
    """The rows to judge on: --data, else the version's own snapshot, else the champion's.

    --data beyond `max_rows` rows is judged on a sample of them (stratified by the label
    column); a training snapshot on the rows its version was trained on (the same sample when
    training sampled it), whose labelled hold-out is then rebuilt as training split it.
    """
    from registry.versions import CHAMPION, aliases_of, client, resolve_version
    from tasks.ingest import load_manifest, sample_snapshot, snapshot_source
    from tasks.train import HOLDOUT_SHARE, SAMPLE_TAG, split_labels

    mlflow_client = client(tracking_uri)
    target = resolve_version(mlflow_client, model, version=version)
    champion_no = aliases_of(mlflow_client, model).get(CHAMPION)
    champion = (
        resolve_version(mlflow_client, model, version=champion_no)
        if champion_no is not None and champion_no != version
        else None
    )
    holdout_of: Any = None
    if data:
        manifest = snapshot_source(
            data,
            f"{model}-eval",
            store,
            query=query,
            delimiter=delimiter,
            chunk_rows=chunk_rows,
        )
        where = manifest.source
        rows = max_rows
        stratify = label_column or target.tags.get("label_column") or None
    else:
        # The version's own training data, else the champion's, else the newest version's
        # (a hand-made champion has none).
        others = sorted(
            mlflow_client.search_model_versions(f"name = '{model}'"),
            key=lambda mv: -int(mv.version),
        )
        candidates = [target, champion] + [
            resolve_version(mlflow_client, model, version=int(mv.version))
            for mv in others
            if (mv.tags or {}).get("dataset_sha256")
        ]
        holdout_of = next(
            (v for v in candidates if v is not None and v.tags.get("dataset_sha256")), None
        )
        if holdout_of is None:
            raise InputError(
                f"no version of {model!r} has a training snapshot to evaluate v{version} on: "
                "pass --data SOURCE"
            )
        manifest = load_manifest(
            store, holdout_of.tags["dataset"], holdout_of.tags["dataset_sha256"]
        )
        where = f"the training snapshot of v{holdout_of.version} ({manifest.sha256[:12]})"
        rows = int(holdout_of.tags.get(SAMPLE_TAG) or manifest.rows)
        stratify = holdout_of.tags.get("label_column") or None
    frame = sample_snapshot(store, manifest, rows, chunk_rows, stratify=stratify)
    if len(frame) < manifest.rows:
        where += f", a sample of {len(frame)} of its {manifest.rows} rows"
    label = label_column or next(
        (
            v.tags.get("label_column")
            for v in (target, champion, holdout_of)
            if v is not None and v.tags.get("label_column") in frame.columns
        ),
        None,
    )
    if label and holdout_of is not None and holdout_of.tags.get("label_column") == label:
        from registry.gate import holdout_rows

        seed = int(holdout_of.tags.get("random_state") or 0)
        frame = holdout_rows(frame, label, seed, HOLDOUT_SHARE).sort_index()
        where += f", labelled hold-out of {len(frame)} rows"
    features, labels = split_labels(frame, label, where)
    return {
        "features": features,
        "labels": None if labels is None else labels.to_numpy(),
        "where": where,
        "label_column": label,
        "target": target,
        "champion": champion,
        "snapshot": f"{manifest.dataset}/{manifest.sha256}",
    }


def expected_share_of(mlflow_client: Any, versions: list[Any], labels: Any) -> float:
    """The anomaly share the model expects: its tag or run metric, the labels', or the default."""
    from registry.gate import DEFAULT_EXPECTED_SHARE

    for v in filter(None, versions):
        if v.tags.get("contamination"):
            return float(v.tags["contamination"])
        if v.run_id:
            try:
                found = mlflow_client.get_run(v.run_id).data.metrics.get("contamination")
            except Exception:  # a hand-logged run may live elsewhere; fall through
                found = None
            if found:
                return float(found)
    if labels is not None and 0 < labels.mean() < 0.5:
        return float(labels.mean())
    return DEFAULT_EXPECTED_SHARE


def gate_version(
    tracking_uri: str,
    model: str,
    batch: dict[str, Any],
    expected_share: float | None,
    margin: float,
    feedback: Any = None,
) -> dict[str, Any]:
    """Score challenger and champion on the same rows and record the gate's decision as tags.

    `feedback` (registry.gate.FeedbackRows): analyst-labelled rows of the model's batches.
    """
    from registry.gate import GateConfig, GateDecision, evaluate_version, load_scorer
    from registry.promotion import record_decision
    from registry.versions import client

    mlflow_client = client(tracking_uri)
    target, champion = batch["target"], batch["champion"]
    share = expected_share or expected_share_of(mlflow_client, [target, champion], batch["labels"])
    try:
        challenger = load_scorer(target.uri, tracking_uri, target.tags)
        evaluation = evaluate_version(
            challenger,
            batch["features"],
            batch["labels"],
            where=batch["where"],
            expected_share=share,
            champion=None
            if champion is None
            else load_scorer(champion.uri, tracking_uri, champion.tags),
            champion_version=None if champion is None else champion.version,
            config=GateConfig(margin=margin),
            feedback=feedback,
        )
    except InputError as exc:
        # A broken interface is a decision too: record it so `registry show` tells why.
        rejected = GateDecision("reject", [f"failed: {exc}"], {}, batch["labels"] is not None)
        record_decision(mlflow_client, model, target.version, rejected.tags())
        raise
    tags = evaluation.decision.tags()
    tags["threshold"] = repr(evaluation.threshold)
    tags["threshold_source"] = evaluation.threshold_source
    tags["score_convention"] = evaluation.convention
    if not target.tags.get("dataset_sha256"):
        # A hand-made model has no training snapshot: drift checks compare with this data.
        tags["reference_snapshot"] = batch["snapshot"]
    record_decision(mlflow_client, model, target.version, tags)
    return {
        **evaluation.decision.as_dict(),
        "threshold": evaluation.threshold,
        "threshold_source": evaluation.threshold_source,
        "score_convention": evaluation.convention,
        "expected_share": share,
    }


def promote_version(
    tracking_uri: str,
    model: str,
    version: int,
    expected_champion: int | None,
    reason: str,
    lock_dir: Path,
    prefect_server: bool,
) -> dict[str, Any]:
    """Move `champion` under the promotion lock (re-checking the version and the champion)."""
    from registry.promotion import promote
    from registry.versions import client

    return promote(
        client(tracking_uri),
        tracking_uri,
        model,
        version,
        expected_champion=expected_champion,
        lock_dir=lock_dir,
        reason=reason,
        prefect_server=prefect_server,
    )
