"""`pynomaly deploy`: register prefect.yaml's deployments and their triggers.

Makes sure the process work pool exists, then runs `prefect deploy` on the project file
against the configured PREFECT_API_URL (a real server, never the ephemeral API). The drift ->
retrain automation is the `retrain` deployment's trigger in prefect.yaml: `prefect deploy`
creates it and replaces it on every deploy.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WORK_POOL = "pynomaly-process"

_ENV_PLACEHOLDER = re.compile(r"\{\{\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def repo_dir() -> Path:
    """The folder flow runs start in: $PYNOMALY_REPO_DIR (the image's /app), else this checkout."""
    configured = os.environ.get("PYNOMALY_REPO_DIR")
    return Path(configured).resolve() if configured else Path(__file__).resolve().parents[1]


def load_project(prefect_file: Path) -> dict[str, Any]:
    """The parsed prefect.yaml (anchors resolved)."""
    import yaml

    with open(prefect_file) as f:
        project = yaml.safe_load(f)
    if not isinstance(project, dict) or not project.get("deployments"):
        raise ValueError(f"{prefect_file} declares no deployments")
    return project


def select_deployments(project: dict[str, Any], names: list[str] | None) -> list[dict[str, Any]]:
    """The deployments called `names` (all when empty); unknown names are an input error."""
    from pynomaly.errors import InputError

    declared = {d["name"]: d for d in project["deployments"]}
    if not names:
        return list(declared.values())
    unknown = [n for n in names if n not in declared]
    if unknown:
        raise InputError(
            f"unknown deployment(s) {', '.join(unknown)}; declared: {', '.join(declared)}"
        )
    return [declared[n] for n in dict.fromkeys(names)]


def entrypoint_file(entrypoint: str, root: Path) -> Path:
    """The file of an entrypoint `path/to/file.py:function`."""
    return root / entrypoint.rsplit(":", 1)[0]


def env_placeholders(value: Any) -> set[str]:
    """Names of the environment variables referenced as `{{ $NAME }}` anywhere in `value`."""
    return set(_ENV_PLACEHOLDER.findall(json.dumps(value, default=str)))


def deploy_environment(environ: dict[str, str]) -> dict[str, str]:
    """The environment `prefect deploy` runs in: the caller's, plus the repo folder default."""
    env = dict(environ)
    env.setdefault("PYNOMALY_REPO_DIR", str(repo_dir()))
    return env


def _flow_name(entrypoint: str, root: Path) -> str:
    """The @flow name behind an entrypoint (imports the flow module)."""
    from prefect.flows import load_flow_from_entrypoint

    with contextlib.chdir(root):
        return load_flow_from_entrypoint(entrypoint).name


def ensure_work_pool(client: Any, name: str = WORK_POOL, pool_type: str = "process") -> str:
    """Create the work pool when missing ("created"/"exists"); fail when the name has another
    type. `client`: a sync `prefect.get_client()`."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        client.create_work_pool(WorkPoolCreate(name=name, type=pool_type))
        return "created"
    if pool.type != pool_type:
        raise RuntimeError(f"work pool {name!r} exists with type {pool.type!r}, not {pool_type}")
    return "exists"


def _run_prefect_deploy(
    prefect_file: Path, names: list[str] | None, timeout: float, env: dict[str, str]
) -> None:
    """`prefect deploy` (all deployments, or the named ones) from the repo folder."""
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy"]
    cmd += ["--prefect-file", str(prefect_file)]
    cmd += [arg for name in names for arg in ("--name", name)] if names else ["--all"]
    proc = subprocess.run(
        cmd, cwd=prefect_file.parent, env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"prefect deploy failed (exit {proc.returncode}): {tail}")


def register(
    names: list[str] | None = None,
    prefect_file: Path | None = None,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Register deployments and their triggers on the Prefect server; a summary."""
    from prefect import get_client
    from prefect.settings import get_current_settings

    from pynomaly.errors import InputError

    started = time.perf_counter()
    prefect_file = (prefect_file or repo_dir() / "prefect.yaml").resolve()
    root = prefect_file.parent
    # Prefect's current settings: the environment, a profile or temporary_settings.
    api = get_current_settings().api
    api_url = api.url
    if not api_url:
        raise InputError(
            "PREFECT_API_URL is not set: start a Prefect server (`pynomaly services up`, then "
            "`source DIR/pynomaly.env`) or point PREFECT_API_URL at yours"
        )
    # `prefect deploy` runs in a subprocess: hand it the same API and credentials.
    env = deploy_environment(dict(os.environ)) | {"PREFECT_API_URL": api_url}
    for name, secret in (
        ("PREFECT_API_AUTH_STRING", api.auth_string),
        ("PREFECT_API_KEY", api.key),
    ):
        if secret is not None:
            env[name] = secret.get_secret_value()

    project = load_project(prefect_file)
    chosen = select_deployments(project, names)
    entrypoints = [d["entrypoint"] for d in chosen]
    missing = [e for e in entrypoints if not entrypoint_file(e, root).exists()]
    if missing:
        raise InputError(
            f"entrypoint file(s) missing: {', '.join(missing)}; deploy the others with --name"
        )
    needed = env_placeholders(chosen) | env_placeholders(project.get("pull"))
    unset = sorted(v for v in needed if not env.get(v))
    if unset:
        raise InputError(
            f"prefect.yaml needs these environment variables for the chosen deployments: "
            f"{', '.join(unset)}"
        )

    automation: dict[str, Any] | None = None
    with get_client(sync_client=True) as client:
        pool = ensure_work_pool(client)
        # Automations of the same name made by hand (before triggers lived in prefect.yaml)
        # would run a second retrain per event; `prefect deploy` makes its own afresh.
        for trigger in [t for spec in chosen for t in spec.get("triggers") or []]:
            for old in client.read_automations_by_name(trigger["name"]):
                client.delete_automation(old.id)
        _run_prefect_deploy(prefect_file, names, timeout, env)
        deployed = []
        for spec in chosen:
            full_name = f"{_flow_name(spec['entrypoint'], root)}/{spec['name']}"
            found = client.read_deployment_by_name(full_name)
            deployed.append(
                {
                    "name": full_name,
                    "id": str(found.id),
                    "entrypoint": spec["entrypoint"],
                    "work_pool": found.work_pool_name,
                    "schedules": [
                        getattr(s.schedule, "cron", None) or str(s.schedule)
                        for s in found.schedules
                    ],
                    "tags": found.tags,
                }
            )
            for trigger in spec.get("triggers") or []:
                (made,) = client.read_automations_by_name(trigger["name"])
                automation = {
                    "name": made.name,
                    "id": str(made.id),
                    "event": ", ".join(trigger["expect"]),
                    "runs": f"{spec['name']} ({found.id})",
                }

    return {
        "api_url": api_url,
        "prefect_file": str(prefect_file),
        "work_pool": {"name": WORK_POOL, "type": "process", "status": pool},
        "deployments": deployed,
        "automation": automation,
        "seconds": round(time.perf_counter() - started, 1),
    }
