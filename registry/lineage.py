"""What the registry knows about a model, for people: versions, aliases, lineage, gate decisions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from mlflow.exceptions import MlflowException

from pynomaly.errors import InputError
from registry.promotion import HISTORY_TAG, RETRAIN_TAG
from registry.repair import REPAIRS_TAG
from registry.tracking import OWNER_TAG
from registry.versions import CHAMPION, COMPLETE_TAG, half_registered

LINEAGE_TAGS = [
    "dataset",
    "dataset_sha256",
    "snapshot_uri",
    "validation",
    "code_version",
    "detector",
    "label_column",
    "threshold",
]


def _json(raw: str | None, default: Any) -> Any:
    if not raw:
        return default
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _when(millis: int | None) -> str | None:
    if not millis:
        return None
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds")


def tuning_of(mlflow_client: Any, run_id: str | None) -> dict[str, Any] | None:
    """The tuning study behind a training run: its trials (child runs) and the study name."""
    if not run_id:
        return None
    try:
        run = mlflow_client.get_run(run_id)
    except Exception:  # the run may be deleted or live in another tracking store
        return None
    trials = mlflow_client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
        max_results=1000,
    )
    study = run.data.tags.get("optuna_study") or run.data.params.get("study_name")
    if not trials and not study:
        return None
    return {"study": study, "trials": len(trials)}


def _state(mv: Any, aliases: dict[str, int]) -> str:
    """complete, training (its train still runs) or half-registered (never served)."""
    tags = dict(mv.tags or {})
    if half_registered(mv, aliases):
        return "half-registered"
    if (
        tags.get(OWNER_TAG)
        and tags.get(COMPLETE_TAG) != "true"
        and aliases.get(CHAMPION) != int(mv.version)
    ):
        return "training"
    return "complete"


def version_info(
    mv: Any, aliases: dict[str, int], mlflow_client: Any | None = None
) -> dict[str, Any]:
    """One version's lineage and gate decision as plain data."""
    tags = dict(mv.tags or {})
    version = int(mv.version)
    info: dict[str, Any] = {
        "version": version,
        "aliases": sorted(a for a, v in aliases.items() if v == version),
        "created_at": _when(mv.creation_timestamp),
        "status": str(mv.status),
        "run_id": mv.run_id,
        "source": mv.source,
        "state": _state(mv, aliases),
    }
    info.update({k: tags.get(k) for k in LINEAGE_TAGS})
    info["gate"] = (
        {
            "decision": tags["gate.decision"],
            "reasons": _json(tags.get("gate.reasons"), []),
            "metrics": _json(tags.get("gate.metrics"), {}),
            "labelled": tags.get("gate.labelled") == "true",
            "champion_version": tags.get("gate.champion_version") or None,
            "at": tags.get("gate.at"),
        }
        if "gate.decision" in tags
        else None
    )
    for key in (
        "promoted_at",
        "retired_at",
        "rolled_back_at",
        "restored_at",
        "registered_by",
        "window_snapshots",
        "retrain_trigger",
        "threshold_source",
    ):
        if key in tags:
            info[key] = _json(tags[key], tags[key]) if key == "window_snapshots" else tags[key]
    if mlflow_client is not None:
        info["tuning"] = tuning_of(mlflow_client, mv.run_id)
    return info


def _versions(mlflow_client: Any, name: str) -> list[Any]:
    found = mlflow_client.search_model_versions(f"name = '{name}'", max_results=10_000)
    return sorted(found, key=lambda mv: int(mv.version))


def list_models(mlflow_client: Any) -> list[dict[str, Any]]:
    """Every registered model with its aliases and its champion's lineage in one line."""
    rows = []
    for model in mlflow_client.search_registered_models(max_results=1000):
        aliases = {a: int(v) for a, v in (model.aliases or {}).items()}
        # A version a killed train left half-registered is not counted (the next command on
        # the model removes it).
        versions = [
            mv for mv in _versions(mlflow_client, model.name) if not half_registered(mv, aliases)
        ]
        champion = next((mv for mv in versions if int(mv.version) == aliases.get(CHAMPION)), None)
        latest = versions[-1] if versions else None
        row: dict[str, Any] = {
            "name": model.name,
            "versions": len(versions),
            "aliases": aliases,
            "champion": aliases.get(CHAMPION),
            "latest": int(latest.version) if latest else None,
        }
        if champion is not None:
            tags = dict(champion.tags or {})
            row.update(
                {k: tags.get(k) for k in ("detector", "dataset", "dataset_sha256", "validation")}
            )
        if latest is not None:
            row["latest_gate"] = (latest.tags or {}).get("gate.decision")
        rows.append(row)
    return sorted(rows, key=lambda r: r["name"])


def show_model(mlflow_client: Any, name: str, with_tuning: bool = True) -> dict[str, Any]:
    """A model's aliases, champion history, retrains and every version's lineage."""
    try:
        model = mlflow_client.get_registered_model(name)
    except MlflowException as exc:
        raise InputError(f"model {name!r} is not registered") from exc
    aliases = {a: int(v) for a, v in (model.aliases or {}).items()}
    tags = dict(model.tags or {})
    return {
        "name": name,
        "description": model.description,
        "aliases": aliases,
        "champion_history": _json(tags.get(HISTORY_TAG), []),
        "retrain_history": _json(tags.get(RETRAIN_TAG), []),
        "repairs": _json(tags.get(REPAIRS_TAG), []),
        "versions": [
            version_info(mv, aliases, mlflow_client if with_tuning else None)
            for mv in _versions(mlflow_client, name)
        ],
    }
