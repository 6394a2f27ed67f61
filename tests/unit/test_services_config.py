"""`pynomaly services`: ports, secrets, env files, the supervisord config and control."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from deployments.cli.services import services_app
from deployments.local import servers, stack, supervisor
from deployments.local.servers import Program, ServiceError
from pynomaly.settings import Settings
from tasks.store import ArtifactStore


def test_free_port_prefers_the_given_port_only_when_free() -> None:
    port = servers.free_port()
    assert servers.free_port(port) == port
    with socket.socket() as taken:
        taken.bind((servers.HOST, port))
        taken.listen()
        assert servers.free_port(port) != port


def test_secrets_are_random_and_url_safe() -> None:
    values = {servers.new_secret() for _ in range(20)}
    assert len(values) == 20
    assert all(v.replace("-", "").replace("_", "").isalnum() for v in values)


def test_write_private_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        servers.write_private(tmp_path / "s.env", "A=1\n")
    finally:
        os.umask(old)
    assert (tmp_path / "s.env").stat().st_mode & 0o777 == 0o600


def test_write_private_never_writes_into_a_readable_file(tmp_path: Path) -> None:
    # A world-readable file of the same name is replaced by a new 0600 one (another inode),
    # not written and then narrowed: a reader holding the old one never sees the new secret.
    path = tmp_path / "s.env"
    path.write_text("old\n")
    path.chmod(0o644)
    with open(path) as reader:
        servers.write_private(path, "SECRET=1\n")
        assert reader.read() == "old\n"
    assert path.read_text() == "SECRET=1\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["s.env"]  # no temporary file left


def _sleeper(tmp_path: Path, command: str) -> Program:
    return Program("sleeper", ["sh", "-c", command], tmp_path, "", 0, {"WHO": "sleeper"})


def test_supervisord_runs_the_programs_and_shutdown_leaves_nothing(tmp_path: Path) -> None:
    conf = supervisor.write_config(tmp_path, [_sleeper(tmp_path, "sleep 300 & sleep 300")])
    assert conf.stat().st_mode & 0o777 == 0o600
    supervisor.start_supervisord(tmp_path, dict(os.environ))
    try:
        assert (tmp_path / supervisor.SOCKET).stat().st_mode & 0o777 == 0o700
        assert supervisor.programs(tmp_path)["sleeper"]["statename"] == "STOPPED"
        supervisor.start_program(tmp_path, "sleeper", lambda: True, timeout=10)
        info = supervisor.programs(tmp_path)["sleeper"]
        assert info["statename"] == "RUNNING"
        leader = psutil.Process(info["pid"])
        assert "WHO=sleeper" in Path(f"/proc/{leader.pid}/environ").read_text()
        tree = [leader, *leader.children(recursive=True)]
    finally:
        left = supervisor.shutdown(tmp_path)
    assert left == {}
    assert not [p for p in tree if p.is_running()]
    assert supervisor.programs(tmp_path) == {}


def test_a_program_that_exits_is_named_with_its_log(tmp_path: Path) -> None:
    supervisor.write_config(tmp_path, [_sleeper(tmp_path, "echo boom-reason; exit 3")])
    supervisor.start_supervisord(tmp_path, dict(os.environ))
    try:
        with pytest.raises(ServiceError, match="boom-reason"):
            supervisor.start_program(tmp_path, "sleeper", lambda: False, timeout=20)
    finally:
        supervisor.shutdown(tmp_path)


def test_secrets_file_is_generated_once_and_private(tmp_path: Path) -> None:
    layout = stack.Layout(tmp_path)
    first = stack.load_secrets(layout)
    assert set(first) == set(stack.SECRET_NAMES)
    assert first["PREFECT_AUTH_STRING"].startswith("pynomaly:")
    assert layout.secrets.stat().st_mode & 0o777 == 0o600
    assert stack.load_secrets(layout) == first


def test_client_env_points_everything_at_the_local_services() -> None:
    state = {
        "ports": {"postgres": 5433, "mlflow": 5000, "prefect": 4200},
        "urls": {
            "postgres": "postgresql://127.0.0.1:5433/",
            "mlflow": "http://127.0.0.1:5000",
            "prefect": "http://127.0.0.1:4200/api",
        },
        "external": {},
        "artifacts": "/srv/pynomaly/services/artifacts",
    }
    secrets = {name: name.lower() for name in stack.SECRET_NAMES}
    env = stack.client_env(state, secrets)
    # Each client gets its component's role and a non-admin MLflow login, never the superuser
    # or the admin.
    assert env["PYNOMALY_RESULTS_DB_URL"] == (
        "postgresql+psycopg2://pynomaly_results:pg_results_password@127.0.0.1:5433/pynomaly_results"
    )
    assert env["PYNOMALY_MLFLOW_BACKEND_URI"] == (
        "postgresql+psycopg2://pynomaly_mlflow:pg_mlflow_password@127.0.0.1:5433/mlflow"
    )
    assert env["MLFLOW_TRACKING_USERNAME"] == "pynomaly"
    assert env["MLFLOW_TRACKING_PASSWORD"] == "mlflow_platform_password"
    assert env["PYNOMALY_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert env["PYNOMALY_ARTIFACT_ROOT"] == "/srv/pynomaly/services/artifacts"
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert env["PREFECT_API_AUTH_STRING"] == "prefect_auth_string"
    for name in ("postgres_password", "mlflow_admin_password", "pg_mlflow_auth_password"):
        assert name not in env.values()
    # Artifacts in a local folder: no S3 endpoint and no S3 keys.
    assert not [k for k in env if k.startswith("AWS_") or "S3" in k]

    metrics = stack.metrics_env(state, secrets)
    assert metrics["PYNOMALY_RESULTS_DB_URL"] == (
        "postgresql+psycopg2://pynomaly_metrics:pg_metrics_password@127.0.0.1:5433/pynomaly_results"
    )
    assert metrics["MLFLOW_TRACKING_USERNAME"] == "pynomaly-metrics"
    assert not {"PYNOMALY_MLFLOW_BACKEND_URI", "PREFECT_API_AUTH_STRING"} & set(metrics)


def test_client_env_with_an_operator_named_s3_endpoint() -> None:
    state = {
        "ports": {"mlflow": 5000},
        "urls": {"mlflow": "http://127.0.0.1:5000"},
        "external": {"s3": "http://minio:9000"},
        "artifacts": "s3://bucket/prefix",
    }
    env = stack.client_env(state, dict.fromkeys(stack.SECRET_NAMES, "x"))
    assert env["PYNOMALY_ARTIFACT_ROOT"] == "s3://bucket/prefix"
    assert env["PYNOMALY_S3_ENDPOINT_URL"] == "http://minio:9000"


def test_artifacts_go_to_a_folder_unless_the_operator_names_s3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = stack.Layout(tmp_path)
    state = {"ports": {}, "urls": {}, "external": {}}
    for name in ("PYNOMALY_ARTIFACT_ROOT", "PYNOMALY_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    assert stack.artifact_root(layout, state, Settings()) == str(tmp_path / "artifacts")
    # A sourced pynomaly.env names the same folder: still the folder.
    monkeypatch.setenv("PYNOMALY_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    assert stack.artifact_root(layout, state, Settings()) == str(tmp_path / "artifacts")
    monkeypatch.setenv("PYNOMALY_S3_ENDPOINT_URL", "http://minio:9000")
    assert stack.artifact_root(layout, state, Settings()) == "s3://pynomaly/artifacts"
    monkeypatch.setenv("PYNOMALY_ARTIFACT_ROOT", "s3://my-bucket/pynomaly/")
    assert stack.artifact_root(layout, state, Settings()) == "s3://my-bucket/pynomaly"
    # AWS: a bucket and no endpoint.
    monkeypatch.delenv("PYNOMALY_S3_ENDPOINT_URL")
    assert stack.artifact_root(layout, state, Settings()) == "s3://my-bucket/pynomaly"


def test_external_urls_are_not_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"ports": {}, "urls": {"mlflow": "http://127.0.0.1:5000"}, "external": {}}
    monkeypatch.delenv("PYNOMALY_S3_ENDPOINT_URL", raising=False)
    assert stack.external("s3", state, Settings()) is None
    monkeypatch.setenv("PYNOMALY_S3_ENDPOINT_URL", "http://minio:9000")
    assert stack.external("s3", state, Settings()) == "http://minio:9000"
    # A sourced pynomaly.env points at our own server: that is not external.
    monkeypatch.setenv("PYNOMALY_TRACKING_URI", "http://127.0.0.1:5000")
    assert stack.external("mlflow", state, Settings()) is None


def test_status_and_down_with_nothing_started(tmp_path: Path) -> None:
    runner = CliRunner()
    status = runner.invoke(services_app, ["status", "--dir", str(tmp_path), "--json"])
    assert status.exit_code == 0
    assert json.loads(status.stdout) == {"dir": str(tmp_path), "healthy": True, "services": {}}
    down = runner.invoke(services_app, ["down", "--dir", str(tmp_path)])
    assert down.exit_code == 0
    assert "nothing was running" in down.stdout


def _refused(result, variable: str) -> None:
    """Exit 2 with one line on stderr that names `variable`."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0] and "change-me" in lines[0], result.stderr


def test_up_refuses_change_me_in_the_environment_before_writing_anything(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "services"
    result = CliRunner().invoke(
        services_app,
        ["up", "--dir", str(folder)],
        env={"MLFLOW_ADMIN_PASSWORD": "change-me"},
    )
    _refused(result, "MLFLOW_ADMIN_PASSWORD")
    assert not folder.exists()


def test_up_refuses_change_me_in_the_secrets_file(tmp_path: Path) -> None:
    layout = stack.Layout(tmp_path)
    stack.load_secrets(layout)
    text = layout.secrets.read_text() + "PG_RESULTS_PASSWORD=change-me\n"
    servers.write_private(layout.secrets, text)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(services_app, ["up", "--dir", str(tmp_path)])
    _refused(result, "PG_RESULTS_PASSWORD")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_every_command_refuses_change_me(tmp_path: Path) -> None:
    from deployments.cli import app

    result = CliRunner().invoke(
        app,
        ["health"],
        env={
            "PYNOMALY_HOME": str(tmp_path / "home"),
            "PYNOMALY_BACKUP_KEY": "change-me-to-at-least-32-random-characters",
        },
    )
    _refused(result, "PYNOMALY_BACKUP_KEY")
    assert not (tmp_path / "home").exists()


def test_embedded_state_is_private_from_its_creation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pynomaly.settings import Settings, apply_runtime_environment
    from tasks import backup
    from tasks.results import results_engine

    # apply_runtime_environment sets some of these: monkeypatch takes them back afterwards.
    for name in (
        "PREFECT_HOME",
        "PREFECT_SERVER_ANALYTICS_ENABLED",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
        "PYNOMALY_BACKUP_KEY",
        "PYNOMALY_S3_ENDPOINT_URL",
    ):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    old = os.umask(0o022)  # what a login shell usually has
    try:
        settings = Settings(home=tmp_path / "home")
        apply_runtime_environment(settings)
        engine = results_engine(settings.results_url)  # the embedded results SQLite file
        engine.dispose()
        store = backup.backup_store(settings.backup_store_root)
        # $PYNOMALY_HOME/backup.key
        backup.backup_key(settings.backup_secret, settings.home_dir, store, create=True)
        artifacts = ArtifactStore(settings.artifact_store, settings.s3_endpoint_url)
        artifacts.put_bytes("datasets/x/y.parquet", b"rows")
    finally:
        os.umask(old)
    home = settings.home_dir
    assert home.stat().st_mode & 0o777 == 0o700
    assert (home / "results.db").stat().st_mode & 0o777 == 0o600
    assert (home / "backup.key").stat().st_mode & 0o777 == 0o600
    assert (home / "artifacts" / "datasets").stat().st_mode & 0o777 == 0o700
    assert (home / "artifacts" / "datasets" / "x" / "y.parquet").stat().st_mode & 0o777 == 0o600


def test_the_mlflow_container_refuses_change_me() -> None:
    script = Path(__file__).resolve().parents[2] / "deployments" / "docker" / "mlflow-server.sh"
    env = {
        "PATH": os.environ["PATH"],
        "MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow:change-me@db/mlflow",
        "MLFLOW_AUTH_DATABASE_URI": "postgresql://mlflow:s3cret@db/mlflow_auth",
        "MLFLOW_ARTIFACTS_DESTINATION": "s3://bucket/mlflow",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "s3cret",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "s3cret",
        "MLFLOW_SERVER_ALLOWED_HOSTS": "mlflow:*",
    }
    done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: MLFLOW_BACKEND_STORE_URI holds the placeholder 'change-me' from .env.example: "
        "set a real secret"
    ]
