"""Offline checks of the deployment files: prefect.yaml against the flows, Kubernetes manifests
against the bundled API schemas, docker-compose.yml against the compose spec, the Dockerfile."""

from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import os
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
MLFLOW_USERS_SCRIPT = ROOT / "deployments" / "docker" / "mlflow-users.sh"
CHECK_SECRETS = ROOT / "deployments" / "docker" / "check-secrets.sh"
INITDB_DIR = ROOT / "deployments" / "docker" / "initdb"
ROLES_SCRIPT = INITDB_DIR / "10-roles.sh"
K8S_DIR = ROOT / "deployments" / "k8s"
# The compose specification's JSON schema as shipped in docker-compose 1.29.2 (Apache-2.0).
COMPOSE_SCHEMA = Path(__file__).parent / "data" / "compose_spec.json"
K8S_VERSION = "1.33.0"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|AUTH_STRING|ACCESS_KEY|TOKEN|BACKUP_KEY", re.IGNORECASE)
TEMPLATE = re.compile(r"\{\{.*\}\}")
# user, password, database of a PostgreSQL URL (compose ${VAR} or Kubernetes $(VAR) passwords)
DB_URL = re.compile(r"postgresql(?:\+\w+)?://([^:/@]+):([^@]*)@[^/]+/(\w+)")
# Least privilege (the rules of `pynomaly services up`): role -> its password variable, and the
# database -> role each component logs in with.
PG_ROLE_PASSWORD = {
    "pynomaly_mlflow": "PG_MLFLOW_PASSWORD",
    "pynomaly_mlflow_auth": "PG_MLFLOW_AUTH_PASSWORD",
    "pynomaly_prefect": "PG_PREFECT_PASSWORD",
    "pynomaly_results": "PG_RESULTS_PASSWORD",
    "pynomaly_metrics": "PG_METRICS_PASSWORD",
}
COMPONENT_LOGINS = {
    "mlflow": {"mlflow": "pynomaly_mlflow", "mlflow_auth": "pynomaly_mlflow_auth"},
    "prefect-server": {"prefect": "pynomaly_prefect"},
    # Backups dump MLflow's database as its owner; results and trials as the results writer.
    "prefect-worker": {
        "pynomaly_results": "pynomaly_results",
        "optuna": "pynomaly_results",
        "mlflow": "pynomaly_mlflow",
    },
    "metrics": {"pynomaly_results": "pynomaly_metrics"},
}
# Admin secrets and the only components that may hold them.
ADMIN_SECRETS = {
    "POSTGRES_PASSWORD": {"postgres", "postgres-roles"},
    "MLFLOW_ADMIN_PASSWORD": {"mlflow", "mlflow-users"},
}


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


def test_drift_trigger_runs_retrain_with_the_model_of_the_event() -> None:
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    from flows.check_drift import DRIFT_EVENT

    (spec,) = DEPLOYMENTS["retrain"]["triggers"]
    trigger = TypeAdapter(DeploymentTriggerTypes).validate_python(spec)
    trigger.set_deployment_id("00000000-0000-0000-0000-000000000000")
    automation = trigger.as_automation()  # what `prefect deploy` creates
    assert automation.name == "pynomaly-retrain-on-drift" and automation.enabled
    assert automation.trigger.expect == {DRIFT_EVENT}
    assert automation.trigger.match.model_dump()["prefect.resource.id"] == "pynomaly.model.*"
    assert (automation.trigger.posture, automation.trigger.threshold) == ("Reactive", 1)
    (action,) = automation.actions
    assert action.type == "run-deployment"
    assert action.parameters == {
        "model": "{{ event.resource['pynomaly.model'] }}",
        "trigger": "drift",
    }
    retrain = load_flow(DEPLOYMENTS["retrain"]["entrypoint"])
    inspect.signature(retrain.fn).bind_partial(**action.parameters)
    retrain.validate_parameters({**action.parameters, "model": "sample"})


def test_deploy_refuses_missing_environment_and_unknown_names() -> None:
    from pynomaly.errors import InputError

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
    assert ("Job", "postgres-roles") in kinds and ("Job", "mlflow-users") in kinds


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
                    assert ref["name"] in K8S_SECRETS, ref


# One Secret per component with only what it needs (10-config.yaml says how to make them).
K8S_SECRETS = {
    "pynomaly-postgres-roles": {"POSTGRES_PASSWORD", *PG_ROLE_PASSWORD.values()},
    "pynomaly-mlflow": {
        "PG_MLFLOW_PASSWORD",
        "PG_MLFLOW_AUTH_PASSWORD",
        "MLFLOW_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SECRET_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    },
    "pynomaly-mlflow-users": {
        "MLFLOW_ADMIN_PASSWORD",
        "MLFLOW_PLATFORM_PASSWORD",
        "MLFLOW_METRICS_PASSWORD",
    },
    "pynomaly-prefect-server": {"PG_PREFECT_PASSWORD", "PREFECT_AUTH_STRING"},
    "pynomaly-worker": {
        "PG_RESULTS_PASSWORD",
        "PG_MLFLOW_PASSWORD",
        "PREFECT_AUTH_STRING",
        "MLFLOW_PLATFORM_PASSWORD",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "PYNOMALY_BACKUP_KEY",
    },
    "pynomaly-metrics": {
        "PG_METRICS_PASSWORD",
        "MLFLOW_METRICS_PASSWORD",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    },
}
K8S_WORKLOAD_SECRET = {
    "postgres-roles": "pynomaly-postgres-roles",
    "mlflow": "pynomaly-mlflow",
    "mlflow-users": "pynomaly-mlflow-users",
    "prefect-server": "pynomaly-prefect-server",
    "prefect-worker": "pynomaly-worker",
    "metrics": "pynomaly-metrics",
}
K8S_WORKLOADS = {
    d["metadata"]["name"]: d for _, d in K8S_DOCS if d["kind"] in ("Deployment", "Job")
}


def k8s_env(name: str) -> dict[str, dict[str, Any]]:
    """The env entries of a workload's containers by variable name."""
    containers = K8S_WORKLOADS[name]["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for c in containers for e in c.get("env", [])}


def env_example() -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )


def test_k8s_each_component_reads_only_its_own_secret() -> None:
    assert set(K8S_WORKLOADS) == set(K8S_WORKLOAD_SECRET)
    for name, secret in K8S_WORKLOAD_SECRET.items():
        refs = [
            e["valueFrom"]["secretKeyRef"]
            for e in k8s_env(name).values()
            if "secretKeyRef" in e.get("valueFrom", {})
        ]
        assert refs, name
        assert {r["name"] for r in refs} == {secret}, name
        assert {r["key"] for r in refs} <= K8S_SECRETS[secret], name
        for key, holders in ADMIN_SECRETS.items():
            if name not in holders:
                assert key not in {r["key"] for r in refs}, f"{name} must not hold {key}"
    # Every key comes from .env (S3 keys of an S3 user besides); the config's recipe makes
    # each Secret with exactly its keys.
    known = set(env_example()) | {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    config = (K8S_DIR / "10-config.yaml").read_text()
    recipe = dict(re.findall(r"^#\s+secret (\S+) '([^']+)'$", config, re.M))
    assert set(recipe) == set(K8S_SECRETS)
    for secret, keys in K8S_SECRETS.items():
        assert keys <= known, (secret, keys - known)
        assert set(recipe[secret].split("|")) == keys, secret


def test_k8s_components_log_in_as_their_own_postgres_role() -> None:
    for name in K8S_WORKLOADS:
        urls = [DB_URL.search(str(e.get("value", ""))) for e in k8s_env(name).values()]
        found = {m[3]: m[1] for m in urls if m}
        assert found == COMPONENT_LOGINS.get(name, {}), name
        for m in filter(None, urls):
            assert m[2] == f"$({PG_ROLE_PASSWORD[m[1]]})", (name, m[0])
    roles = k8s_env("postgres-roles")
    assert roles["PGUSER"]["value"] == "$(POSTGRES_ADMIN_USER)"
    assert set(PG_ROLE_PASSWORD.values()) <= set(roles)
    (container,) = K8S_WORKLOADS["postgres-roles"]["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["/app/deployments/docker/initdb/10-roles.sh"]


def test_k8s_worker_and_exporter_use_mlflow_users_without_admin_rights() -> None:
    worker, metrics = k8s_env("prefect-worker"), k8s_env("metrics")
    assert worker["MLFLOW_TRACKING_USERNAME"]["value"] == "pynomaly"
    assert worker["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == (
        "MLFLOW_PLATFORM_PASSWORD"
    )
    assert metrics["MLFLOW_TRACKING_USERNAME"]["value"] == "pynomaly-metrics"
    assert metrics["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == (
        "MLFLOW_METRICS_PASSWORD"
    )
    users = k8s_env("mlflow-users")
    assert set(users) >= {"MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_PLATFORM_PASSWORD"}
    (container,) = K8S_WORKLOADS["mlflow-users"]["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["/app/deployments/docker/mlflow-users.sh"]


def test_k8s_containers_keep_the_image_entrypoint_that_refuses_placeholders() -> None:
    # `command` would replace the image's ENTRYPOINT (tini + check-secrets.sh); `args` keeps it.
    for name, doc in K8S_WORKLOADS.items():
        for container in doc["spec"]["template"]["spec"]["containers"]:
            assert "command" not in container, name


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
        "mlflow-users",
        "prefect-server",
        "prefect-worker",
        "metrics",
    }
    for name, service in SERVICES.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), (name, image)
        if name not in ("minio-init", "mlflow-users"):  # one-shot jobs
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
    example = env_example()
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


# Least privilege -----------------------------------------------------------------------------


def compose_env(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in (SERVICES[service].get("environment") or {}).items()}


def referenced_vars(service: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", json.dumps(SERVICES[service])))


def test_compose_components_log_in_as_their_own_postgres_role() -> None:
    for name in SERVICES:
        urls = [DB_URL.search(v) for v in compose_env(name).values()]
        found = {m[3]: m[1] for m in urls if m}
        assert found == COMPONENT_LOGINS.get(name, {}), name
        for m in filter(None, urls):
            assert m[2].startswith(f"${{{PG_ROLE_PASSWORD[m[1]]}:?"), (name, m[0])
    # The postgres container makes the roles: it gets their passwords, and the check runs first.
    postgres = SERVICES["postgres"]
    assert set(PG_ROLE_PASSWORD.values()) <= set(postgres["environment"])
    assert postgres["entrypoint"][1:] == ["/pynomaly/check-secrets.sh", "docker-entrypoint.sh"]
    assert "./deployments/docker/initdb:/docker-entrypoint-initdb.d:ro" in postgres["volumes"]


def test_compose_admin_secrets_stay_with_the_admins() -> None:
    for name in SERVICES:
        for key, holders in ADMIN_SECRETS.items():
            if name not in holders:
                assert key not in referenced_vars(name), f"{name} must not hold {key}"
    worker, metrics = compose_env("prefect-worker"), compose_env("metrics")
    assert worker["MLFLOW_TRACKING_USERNAME"] == "pynomaly"
    assert worker["MLFLOW_TRACKING_PASSWORD"].startswith("${MLFLOW_PLATFORM_PASSWORD:?")
    assert metrics["MLFLOW_TRACKING_USERNAME"] == "pynomaly-metrics"
    assert metrics["MLFLOW_TRACKING_PASSWORD"].startswith("${MLFLOW_METRICS_PASSWORD:?")
    # The worker starts once its MLflow user exists.
    users = SERVICES["mlflow-users"]
    assert users["command"] == ["/app/deployments/docker/mlflow-users.sh"]
    assert SERVICES["prefect-worker"]["depends_on"]["mlflow-users"] == {
        "condition": "service_completed_successfully"
    }
    # Our image's services keep its entrypoint (tini + the placeholder check).
    for name, service in SERVICES.items():
        if service["image"].startswith("pynomaly:"):
            assert "entrypoint" not in service, name


@pytest.mark.parametrize(
    "script", [ROLES_SCRIPT, MLFLOW_USERS_SCRIPT, CHECK_SECRETS], ids=lambda p: p.name
)
def test_deployment_scripts_are_executable_posix_shell(script: Path) -> None:
    assert script.exists(), f"{script.relative_to(ROOT)} is missing"
    assert script.stat().st_mode & 0o111, f"{script.name} must be executable"
    subprocess.run(["sh", "-n", str(script)], check=True)
    # The postgres image sources *.sh files that are not executable and runs *.sql as the
    # superuser: the initdb folder holds the roles script only.
    assert [p.name for p in INITDB_DIR.iterdir()] == ["10-roles.sh"]


def test_image_entrypoint_refuses_placeholders_before_the_command() -> None:
    (entrypoint,) = [args for word, args in dockerfile_instructions() if word == "ENTRYPOINT"]
    assert json.loads(entrypoint) == [
        "/usr/bin/tini",
        "--",
        "/app/deployments/docker/check-secrets.sh",
    ]


def run_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(CHECK_SECRETS), "sh", "-c", "echo ran"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
    )


def test_check_secrets_refuses_change_me_naming_the_variable() -> None:
    done = run_check({"PG_RESULTS_PASSWORD": "s3cret", "MLFLOW_PLATFORM_PASSWORD": "x-change-me"})
    assert done.returncode == 2
    assert done.stdout == ""  # the command did not run
    (line,) = done.stderr.splitlines()
    assert "MLFLOW_PLATFORM_PASSWORD" in line and "'change-me'" in line
    assert "x-change-me" not in line  # the value itself is never echoed
    # The Prefect auth string and the backup key carry the placeholder inside a longer value.
    done = run_check({"PREFECT_AUTH_STRING": "pynomaly:change-me"})
    assert done.returncode == 2 and "PREFECT_AUTH_STRING" in done.stderr
    done = run_check({"PG_RESULTS_PASSWORD": "s3cret", "NOTE": "two\nlines"})
    assert (done.returncode, done.stdout, done.stderr) == (0, "ran\n", "")
