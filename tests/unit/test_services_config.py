"""The services launcher's pure parts: ports, secrets, env files, process-group bookkeeping."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deployments import services, services_cli


def test_free_port_prefers_the_given_port_only_when_free() -> None:
    port = services.free_port()
    assert services.free_port(port) == port
    with socket.socket() as taken:
        taken.bind((services.HOST, port))
        taken.listen()
        assert services.free_port(port) != port


def test_secrets_are_random_and_url_safe() -> None:
    values = {services.new_secret() for _ in range(20)}
    assert len(values) == 20
    assert all(v.replace("-", "").replace("_", "").isalnum() for v in values)


def test_write_private_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        services.write_private(tmp_path / "s.env", "A=1\n")
    finally:
        os.umask(old)
    assert (tmp_path / "s.env").stat().st_mode & 0o777 == 0o600


def test_stop_group_stops_children_even_in_their_own_session(tmp_path: Path) -> None:
    # `setsid` puts the grandchild in another process group, as PostgreSQL does with backends.
    proc = services._spawn(
        ["sh", "-c", "sleep 300 & setsid sleep 300 & wait"], tmp_path / "log", env=os.environ
    )
    deadline = time.monotonic() + 5
    while len(services.group_pids(proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(services.group_pids(proc.pid)) == 3
    services.stop_group(proc.pid, timeout=5, proc=proc)
    assert services.group_pids(proc.pid) == []
    assert not services.pid_alive(proc.pid)


def test_wait_until_raises_with_the_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    proc = services._spawn(["sh", "-c", "echo boom-reason; exit 3"], log, env=os.environ)
    with pytest.raises(services.ServiceError, match="boom-reason"):
        services._wait_until("svc", lambda: False, proc, log, timeout=10)


def test_secrets_file_is_generated_once_and_private(tmp_path: Path) -> None:
    layout = services_cli.Layout(tmp_path)
    first = services_cli._load_secrets(layout)
    assert set(first) == set(services_cli.SECRET_NAMES)
    assert first["PREFECT_AUTH_STRING"].startswith("pynomaly:")
    assert layout.secrets.stat().st_mode & 0o777 == 0o600
    assert services_cli._load_secrets(layout) == first


def test_client_env_points_everything_at_the_local_services() -> None:
    state = {
        "services": {
            "postgres": {"port": 5433, "url": "postgresql://127.0.0.1:5433/"},
            "s3": {"url": "http://127.0.0.1:9000"},
            "mlflow": {"url": "http://127.0.0.1:5000"},
            "prefect": {"url": "http://127.0.0.1:4200/api"},
        },
        "external": {},
    }
    secrets = dict.fromkeys(services_cli.SECRET_NAMES, "x")
    env = services_cli._client_env(state, secrets)
    assert env["PYNOMALY_RESULTS_DB_URL"] == (
        "postgresql+psycopg2://postgres:x@127.0.0.1:5433/pynomaly_results"
    )
    assert env["PYNOMALY_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert env["PYNOMALY_S3_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert env["PYNOMALY_ARTIFACT_ROOT"] == "s3://pynomaly/artifacts"
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert {"PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_PASSWORD", "AWS_ACCESS_KEY_ID"} <= set(env)


def test_external_urls_are_not_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"services": {"mlflow": {"url": "http://127.0.0.1:5000"}}, "external": {}}
    monkeypatch.delenv("PYNOMALY_S3_ENDPOINT_URL", raising=False)
    assert services_cli._external("s3", state) is None
    monkeypatch.setenv("PYNOMALY_S3_ENDPOINT_URL", "http://minio:9000")
    assert services_cli._external("s3", state) == "http://minio:9000"
    # A sourced pynomaly.env points at our own server: that is not external.
    monkeypatch.setenv("PYNOMALY_TRACKING_URI", "http://127.0.0.1:5000")
    assert services_cli._external("mlflow", state) is None


def test_a_reused_pid_is_not_taken_for_a_recorded_service() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        entry = {"pid": proc.pid, "start_time": services.start_time(proc.pid)}
        assert services_cli._recorded_alive(entry)
        assert not services_cli._recorded_alive(entry | {"start_time": 1})
    finally:
        proc.kill()
        proc.wait()
    assert not services_cli._recorded_alive(entry)


def test_status_and_down_with_nothing_started(tmp_path: Path) -> None:
    runner = CliRunner()
    status = runner.invoke(services_cli.services_app, ["status", "--dir", str(tmp_path), "--json"])
    assert status.exit_code == 0
    assert json.loads(status.stdout) == {"dir": str(tmp_path), "healthy": True, "services": {}}
    down = runner.invoke(services_cli.services_app, ["down", "--dir", str(tmp_path)])
    assert down.exit_code == 0
    assert "nothing was running" in down.stdout
