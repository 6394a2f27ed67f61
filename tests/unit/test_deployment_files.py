"""Offline checks of the deployment files: prefect.yaml against the flows, Kubernetes manifests
against the bundled API schemas, docker-compose.yml against the compose spec, the Dockerfile."""

from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from deployments import deploy

ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = ROOT / "prefect.yaml"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "deployments" / "docker" / "Dockerfile"
MLFLOW_SCRIPT = ROOT / "deployments" / "docker" / "mlflow-server.sh"
K8S_DIR = ROOT / "deployments" / "k8s"
# The compose specification's JSON schema as shipped in docker-compose 1.29.2 (Apache-2.0).
COMPOSE_SCHEMA = Path(__file__).parent / "data" / "compose_spec.json"
K8S_VERSION = "1.33.0"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|AUTH_STRING|ACCESS_KEY|TOKEN|BACKUP_KEY", re.IGNORECASE)
TEMPLATE = re.compile(r"\{\{.*\}\}")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


PROJECT = load_yaml(PREFECT_YAML)
DEPLOYMENTS = {d["name"]: d for d in PROJECT["deployments"]}


# prefect.yaml ---------------------------------------------------------------------------------


def load_flow(entrypoint: str) -> Any:
    """Import the flow object behind `path/file.py:function` (the file must exist)."""
    path, _, name = entrypoint.rpartition(":")
    spec = importlib.util.spec_from_file_location(f"_entry_{Path(path).stem}", ROOT / path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def fill_templates(params: dict[str, Any]) -> dict[str, Any]:
    """Deployment parameters with `{{ $VAR }}` values replaced by a sample string."""
    return {
        k: "sample" if isinstance(v, str) and TEMPLATE.search(v) else v for k, v in params.items()
    }


def test_declares_every_platform_deployment_with_its_schedule() -> None:
    expected = {
        "ingest-hourly": ("flows/ingest_dataset.py:ingest_dataset", "0 * * * *"),
        "check-drift-daily": ("flows/check_drift.py:check_drift", "30 5 * * *"),
        "retrain": ("flows/retrain_detector.py:retrain_detector", "0 3 * * 1"),
        "backup-nightly": ("flows/backup_platform.py:backup_platform", "0 2 * * *"),
        "restore-drill-weekly": ("flows/restore_drill.py:restore_drill", "0 4 * * 0"),
        "score": ("flows/score_batch.py:score_batch", None),
        "pipeline": ("flows/run_pipeline.py:pipeline", None),
    }
    assert set(DEPLOYMENTS) == set(expected)
    for name, (entrypoint, cron) in expected.items():
        dep = DEPLOYMENTS[name]
        assert dep["entrypoint"] == entrypoint
        schedules = dep.get("schedules") or []
        assert [s["cron"] for s in schedules] == ([cron] if cron else []), name
        for schedule in schedules:
            assert schedule["timezone"] == "UTC"
        assert dep["work_pool"]["name"] == deploy.WORK_POOL == "pynomaly-process"
        assert "pynomaly" in dep["tags"]


def test_process_pool_project_runs_from_the_repo_without_build_or_push() -> None:
    assert PROJECT["build"] is None and PROJECT["push"] is None
    (step,) = PROJECT["pull"]
    assert step == {
        "prefect.deployments.steps.set_working_directory": {"directory": "{{ $PYNOMALY_REPO_DIR }}"}
    }
    # The deployment defaults hold no secrets: only templates and plain values.
    for dep in PROJECT["deployments"]:
        for key in dep.get("parameters") or {}:
            assert not SECRET_NAME.search(key), (dep["name"], key)


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_entrypoint_exists_and_is_a_flow(name: str) -> None:
    from prefect import Flow

    entrypoint = DEPLOYMENTS[name]["entrypoint"]
    path = deploy.entrypoint_file(entrypoint, ROOT)
    assert path.exists(), f"{name}: entrypoint file {path.relative_to(ROOT)} is missing"
    assert isinstance(load_flow(entrypoint), Flow)


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_deployment_parameters_fit_the_flow_signature(name: str) -> None:
    dep = DEPLOYMENTS[name]
    flow = load_flow(dep["entrypoint"])  # fails loudly when the file is missing
    params = fill_templates(dep.get("parameters") or {})
    signature = inspect.signature(flow.fn)
    signature.bind_partial(**params)  # TypeError on a parameter the flow does not take
    if dep.get("schedules"):
        # A scheduled run has nobody to fill in the form: every required value is given.
        required = {
            p.name for p in signature.parameters.values() if p.default is inspect.Parameter.empty
        }
        assert required <= set(params), f"{name}: schedule lacks {sorted(required - set(params))}"
        flow.validate_parameters(params)  # types, as the server checks them


def test_drift_automation_runs_retrain_with_the_model_of_the_event() -> None:
    spec = deploy.drift_automation("00000000-0000-0000-0000-000000000000")
    assert spec.trigger.expect == {"pynomaly.drift.detected"}
    assert spec.trigger.match.model_dump()["prefect.resource.id"] == "pynomaly.model.*"
    (action,) = spec.actions
    assert action.type == "run-deployment"
    assert action.parameters == {
        "model": "{{ event.resource['pynomaly.model'] }}",
        "trigger": "drift",
    }
    retrain = load_flow(DEPLOYMENTS[deploy.RETRAIN_DEPLOYMENT]["entrypoint"])
    inspect.signature(retrain.fn).bind_partial(**action.parameters)
    retrain.validate_parameters({**action.parameters, "model": "sample"})


def test_deploy_refuses_missing_environment_and_unknown_names() -> None:
    from data_checks.errors import InputError

    chosen = deploy.select_deployments(PROJECT, ["ingest-hourly"])
    assert deploy.env_placeholders(chosen) == {"PYNOMALY_INGEST_SOURCE", "PYNOMALY_DATASET"}
    assert deploy.env_placeholders(PROJECT["pull"]) == {"PYNOMALY_REPO_DIR"}
    assert deploy.deploy_environment({})["PYNOMALY_REPO_DIR"] == str(deploy.repo_dir())
    with pytest.raises(InputError, match="unknown deployment"):
        deploy.select_deployments(PROJECT, ["nope"])


# Kubernetes -----------------------------------------------------------------------------------


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


K8S_DOCS = k8s_documents()


@pytest.mark.parametrize("doc", [d for _, d in K8S_DOCS], ids=[i for i, _ in K8S_DOCS])
def test_k8s_manifest_matches_the_api_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_k8s_validator_rejects_a_misspelt_field() -> None:
    _, deployment = next(d for d in K8S_DOCS if d[1]["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_k8s_has_worker_mlflow_prefect_and_a_network_policy() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in K8S_DOCS}
    for name in ("prefect-worker", "mlflow", "prefect-server"):
        assert ("Deployment", name) in kinds
    assert ("Service", "mlflow") in kinds and ("Service", "prefect-server") in kinds
    policies = [d for _, d in K8S_DOCS if d["kind"] == "NetworkPolicy"]
    assert any(p["spec"]["podSelector"] == {} and "ingress" not in p["spec"] for p in policies)
    # Secrets are referenced, never shipped.
    assert not [d for _, d in K8S_DOCS if d["kind"] == "Secret"]


@pytest.mark.parametrize(
    "doc",
    [d for _, d in K8S_DOCS if d["kind"] == "Deployment"],
    ids=[i for i, d in K8S_DOCS if d["kind"] == "Deployment"],
)
def test_k8s_containers_have_probes_limits_and_no_literal_secrets(doc: dict[str, Any]) -> None:
    pod = doc["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    for container in pod["containers"]:
        assert "readinessProbe" in container and "livenessProbe" in container
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind])
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        image = container["image"]
        assert ":" in image and not image.endswith(":latest"), image
        for env in container.get("env", []):
            if "value" in env:
                value = str(env["value"])
                # Secret material only by reference: a literal value may embed $(VAR) only.
                assert not SECRET_NAME.search(env["name"]) or value.startswith("$("), env
                assert not re.search(r"://[^:/]+:(?!\$\()[^@]+@", value), env
            else:
                ref = env["valueFrom"].get("secretKeyRef")
                if ref:
                    assert ref["name"] == "pynomaly-secrets"


# docker compose -------------------------------------------------------------------------------

COMPOSE_DOC = load_yaml(COMPOSE)
SERVICES = COMPOSE_DOC["services"]


def test_compose_file_matches_the_compose_spec() -> None:
    # The file names draft 2019-09 with a trailing '#' that jsonschema does not look up.
    validator = jsonschema.Draft201909Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    validator.validate(COMPOSE_DOC)
    broken = copy.deepcopy(COMPOSE_DOC)
    broken["services"]["mlflow"]["healthcheckk"] = {}
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


def test_compose_services_are_health_checked_and_pinned() -> None:
    assert set(SERVICES) == {
        "postgres",
        "minio",
        "minio-init",
        "mlflow",
        "prefect-server",
        "prefect-worker",
    }
    for name, service in SERVICES.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), (name, image)
        if name != "minio-init":  # a one-shot job
            assert service["healthcheck"]["test"], name
    assert SERVICES["prefect-worker"]["depends_on"]["prefect-server"] == {
        "condition": "service_healthy"
    }
    assert SERVICES["mlflow"]["depends_on"]["minio-init"] == {
        "condition": "service_completed_successfully"
    }


def test_compose_mlflow_uses_postgres_proxied_s3_artifacts_and_basic_auth() -> None:
    env = SERVICES["mlflow"]["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert SERVICES["mlflow"]["command"] == ["/app/deployments/docker/mlflow-server.sh"]
    script = MLFLOW_SCRIPT.read_text()
    assert "--serve-artifacts" in script and "--app-name basic-auth" in script
    subprocess.run(["sh", "-n", str(MLFLOW_SCRIPT)], check=True)
    assert MLFLOW_SCRIPT.stat().st_mode & 0o111, "mlflow-server.sh must be executable"
    server_env = SERVICES["prefect-server"]["environment"]
    assert server_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg")


def test_compose_secrets_come_from_the_env_file_only() -> None:
    text = "\n".join(
        line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    referenced = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert referenced == set(example), "every ${VAR} in compose is in .env.example and back"
    for key, value in example.items():
        if SECRET_NAME.search(key):
            assert "change-me" in value, f".env.example must hold placeholders only ({key})"

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, str) and SECRET_NAME.search(str(k)):
                    assert v.startswith("${"), f"{where}.{k} must come from .env"
                walk(v, f"{where}.{k}")
        elif isinstance(value, list):
            for v in value:
                walk(v, where)
        elif isinstance(value, str):
            # Passwords inside URLs are interpolated too.
            assert not re.search(r"://[^:/]+:(?!\$\{)[^@/]+@", value), f"{where}: {value}"

    walk(COMPOSE_DOC, "compose")


# Dockerfile -----------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            rows.append((word.upper(), rest.strip()))
    return rows


def test_dockerfile_is_multi_stage_non_root_with_healthcheck() -> None:
    rows = dockerfile_instructions()
    froms = [args for word, args in rows if word == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    for base in froms:
        image = base.split()[0]
        assert ":" in image and not image.endswith(":latest"), image
    last_from = max(i for i, (word, _) in enumerate(rows) if word == "FROM")
    final = rows[last_from:]
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(word == "HEALTHCHECK" for word, _ in final)
    assert any(word == "COPY" and args.startswith("--from=build") for word, args in final)
    installs = [args for word, args in rows if word == "RUN" and "pip install" in args]
    assert installs and all("--constraint constraints.txt" in args for args in installs)


def test_dockerfile_copies_only_files_that_exist() -> None:
    for word, args in dockerfile_instructions():
        if word != "COPY" or "--from=" in args:
            continue
        parts = [p for p in args.split() if not p.startswith("--")]
        for source in parts[:-1]:
            assert (ROOT / source).exists(), f"COPY source {source} is missing from the repo"
