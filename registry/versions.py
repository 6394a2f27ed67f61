"""Register model versions, move aliases, resolve `NAME@ALIAS` / versions, read lineage."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pynomaly.errors import InputError

CHAMPION = "champion"
CHALLENGER = "challenger"
# Set last by the train flow: the version's train finished (registered, aliased, gated).
COMPLETE_TAG = "pynomaly.complete"
FAILED_TAG = "pynomaly.failed"
# Entries kept in a model's JSON-list tags (champion history, retrains, repairs).
LIST_TAG_KEEP = 50


def client(tracking_uri: str) -> Any:
    """An MLflow client on the given tracking URI (no process-wide URI is set)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") in {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def is_registered(mlflow_client: Any, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_registered_model(name)
    except MlflowException as exc:
        if _not_found(exc):
            return False
        raise
    return True


def read_list_tag(mlflow_client: Any, name: str, tag: str) -> list[dict[str, Any]]:
    """A JSON list kept in a registered model's tag, oldest first."""
    raw = (mlflow_client.get_registered_model(name).tags or {}).get(tag)
    return json.loads(raw) if raw else []


def write_list_tag(mlflow_client: Any, name: str, tag: str, entries: list[dict[str, Any]]) -> None:
    mlflow_client.set_registered_model_tag(name, tag, json.dumps(entries[-LIST_TAG_KEEP:]))


def parse_model_ref(ref: str) -> tuple[str, str | None]:
    """`NAME@ALIAS` -> (NAME, ALIAS); `NAME` -> (NAME, None)."""
    name, _, alias = ref.partition("@")
    if not name:
        raise InputError(f"invalid model reference {ref!r}: expected NAME or NAME@ALIAS")
    return name, alias or None


def check_model_ref(
    ref: str, alias: str | None = None, version: int | None = None
) -> tuple[str, str | None]:
    """`NAME[@ALIAS]` with an optional alias or version: (NAME, ALIAS); never both an alias and a
    version (one would be ignored), and versions count from 1."""
    name, ref_alias = parse_model_ref(ref)
    if version is not None and (alias or ref_alias):
        raise InputError(
            f"--model {ref!r} with --version {version}: give an alias or a version, not both"
        )
    if version is not None and version < 1:
        raise InputError(f"--version {version}: model versions count from 1")
    return name, alias or ref_alias


@dataclass(frozen=True)
class ResolvedVersion:
    """A model version found by alias or number."""

    name: str
    version: int
    alias: str | None
    run_id: str | None
    source: str
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def aliases_of(mlflow_client: Any, name: str) -> dict[str, int]:
    """alias -> version of a registered model."""
    model = mlflow_client.get_registered_model(name)
    return {alias: int(v) for alias, v in (model.aliases or {}).items()}


def half_registered(mv: Any, aliases: dict[str, int]) -> bool:
    """A version never to serve or count: marked failed, or registered by a train whose process
    died before the train finished and that did not become champion (the next train, retrain,
    promote or rollback of the model removes it; see registry.repair)."""
    from registry.tracking import OWNER_TAG, owner_alive

    tags = dict(mv.tags or {})
    if tags.get(FAILED_TAG) == "true":
        return True
    if not tags.get(OWNER_TAG) or tags.get(COMPLETE_TAG) == "true":
        return False
    return aliases.get(CHAMPION) != int(mv.version) and owner_alive(tags[OWNER_TAG]) is False


def resolve_version(
    mlflow_client: Any, name: str, alias: str | None = None, version: int | None = None
) -> ResolvedVersion:
    """The version an alias points at, or a numbered version; the champion when neither given."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = aliases_of(mlflow_client, name)
    except MlflowException as exc:
        if _not_found(exc):
            raise InputError(f"model {name!r} is not registered") from exc
        raise
    try:
        if version is not None:
            mv = mlflow_client.get_model_version(name, str(version))
        else:
            alias = alias or CHAMPION
            if alias not in aliases:
                known = ", ".join(f"{a}->v{v}" for a, v in sorted(aliases.items())) or "none"
                raise InputError(f"model {name!r} has no alias {alias!r} (aliases: {known})")
            mv = mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if _not_found(exc):
            raise InputError(f"model {name!r} has no version {version}") from exc
        raise
    if (mv.tags or {}).get(FAILED_TAG) == "true":
        raise InputError(f"{name} v{mv.version} is marked failed ({FAILED_TAG}); it is not served")
    if half_registered(mv, aliases):
        raise InputError(
            f"{name} v{mv.version} was left half-registered by a train that did not finish; it "
            f"is never served (the next train, retrain, promote or rollback of {name!r} removes it)"
        )
    found_alias = (
        alias
        if version is None
        else next((a for a, v in aliases.items() if v == int(mv.version)), None)
    )
    return ResolvedVersion(
        name=name,
        version=int(mv.version),
        alias=found_alias,
        run_id=mv.run_id,
        source=mv.source,
        tags=dict(mv.tags or {}),
    )


def register_version(
    mlflow_client: Any, model_uri: str, name: str, run_id: str, tags: dict[str, str]
) -> tuple[int, str]:
    """Register a logged model as a new version; the first becomes champion, later challenger.

    A caller that tags the version with its owner (registry.tracking.OWNER_TAG, as the train
    flow does) must tag it complete when done: until then it is unfinished, and removed once
    its owner is gone (registry.repair).
    """
    if not is_registered(mlflow_client, name):
        mlflow_client.create_registered_model(
            name, description="Anomaly detector registered by Pynomaly."
        )
    # A tracking server only accepts a models:/<model_id> source together with that model_id.
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    mv = mlflow_client.create_model_version(
        name, model_uri, run_id=run_id, tags=tags, model_id=model_id
    )
    alias = CHALLENGER if CHAMPION in aliases_of(mlflow_client, name) else CHAMPION
    mlflow_client.set_registered_model_alias(name, alias, mv.version)
    return int(mv.version), alias
