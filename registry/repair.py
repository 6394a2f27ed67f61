"""Repair what a killed `train` left: runs still RUNNING and versions that never finished.

A version registered by the train flow carries its process as owner (`pynomaly.owner`) and is
complete once the flow tags it `pynomaly.complete`, after its alias and gate. One that never
got there while its process is gone is settled by the next train, retrain, promote or rollback
of the model, under the promotion lock (registry.promotion.repair_model):
- it holds `champion`: it is kept and marked complete. Only a first version (which the flow
  makes champion without a gate) or one that passed the gate and the locked, re-checked
  promotion gets there, so nothing is left to do for it;
- otherwise (no alias, or a `challenger` the gate never judged) its registry entry is deleted:
  the flow would have to gate it again, and a deleted entry is ignored by every reader (alias
  and number resolution, counts, the gate's candidates, exporters, MLflow's UI), where a tag
  would have to be honoured by each. The run keeps the logged model and a
  `pynomaly.unregistered` tag; the model's `pynomaly.repairs` tag records what was done, and
  MLflow never reuses the version number.
Processes on other hosts cannot be checked from here: their runs and versions are left alone.
"""

from __future__ import annotations

import logging
from typing import Any

from registry.tracking import OWNER_TAG, owner, owner_alive
from registry.versions import (
    CHAMPION,
    COMPLETE_TAG,
    _not_found,
    aliases_of,
    now_iso,
    read_list_tag,
    write_list_tag,
)

log = logging.getLogger(__name__)

REPAIRS_TAG = "pynomaly.repairs"
UNREGISTERED_TAG = "pynomaly.unregistered"


def mark_complete(mlflow_client: Any, name: str, version: int) -> None:
    """The train flow's last registry write: the version's train finished."""
    mlflow_client.set_model_version_tag(name, str(version), COMPLETE_TAG, "true")


def settle_versions(
    mlflow_client: Any, name: str, *, run_id: str | None = None, reason: str | None = None
) -> list[dict[str, Any]]:
    """Complete or remove the unfinished versions of a model whose process is gone (or, with
    `run_id`, those of that run: its own train failing); the caller holds the promotion lock."""
    try:
        aliases = aliases_of(mlflow_client, name)
    except Exception as exc:
        if _not_found(exc):
            return []
        raise
    done: list[dict[str, Any]] = []
    for mv in mlflow_client.search_model_versions(f"name = '{name}'", max_results=10_000):
        tags = dict(mv.tags or {})
        who = tags.get(OWNER_TAG)
        if not who or tags.get(COMPLETE_TAG) == "true":
            continue  # finished, or registered outside the train flow (by hand)
        if run_id is not None:
            if mv.run_id != run_id:
                continue
        elif owner_alive(who) is not False:
            continue  # still training, or on another host
        version = int(mv.version)
        why = reason or f"its train ({who}) was killed before it finished"
        entry = {"version": version, "at": now_iso(), "by": owner(), "reason": why}
        if aliases.get(CHAMPION) == version:
            mark_complete(mlflow_client, name, version)
            done.append({**entry, "action": "completed (champion)"})
            continue
        if mv.run_id:
            try:
                mlflow_client.set_tag(mv.run_id, UNREGISTERED_TAG, f"{name} v{version}: {why}")
            except Exception as exc:  # the run may be gone; the version must go all the same
                if not _not_found(exc):
                    raise
        mlflow_client.delete_model_version(name, str(version))
        done.append({**entry, "action": "removed"})
    if done:
        write_list_tag(
            mlflow_client, name, REPAIRS_TAG, read_list_tag(mlflow_client, name, REPAIRS_TAG) + done
        )
        for entry in done:
            log.warning("%s v%s %s: %s", name, entry["version"], entry["action"], entry["reason"])
    return done
