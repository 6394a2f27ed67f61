"""The real local services answer like the production ones the platform talks to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest
import servers

from deployments.local.servers import http_ok

pytestmark = pytest.mark.integration


def test_postgres_round_trip(pg_url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE scores (batch text PRIMARY KEY, score float)"))
            conn.execute(
                sa.text("INSERT INTO scores VALUES (:b, :s)"),
                [{"b": "a", "s": 0.5}, {"b": "b", "s": 1.5}],
            )
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT batch, score FROM scores ORDER BY batch")).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [("a", 0.5), ("b", 1.5)]


def test_each_pg_url_is_a_new_empty_database(pg_server: servers.PostgresServer) -> None:
    import sqlalchemy as sa

    url = pg_server.create_database("fresh_db_check")
    try:
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            tables = conn.execute(
                sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            ).scalar()
        engine.dispose()
        assert tables == 0
    finally:
        pg_server.drop_database("fresh_db_check")


def test_s3_put_and_get(s3_endpoint: str, s3_bucket: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.put_object(Bucket=s3_bucket, Key="datasets/x.csv", Body=b"a,b\n1,2\n")
    body = s3.get_object(Bucket=s3_bucket, Key="datasets/x.csv")["Body"].read()
    assert body == b"a,b\n1,2\n"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == ["datasets/x.csv"]


def test_versioned_bucket(s3_endpoint: str) -> None:
    import boto3

    servers.create_bucket(s3_endpoint, "versioned-check", versioned=True)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    assert s3.get_bucket_versioning(Bucket="versioned-check")["Status"] == "Enabled"


def test_mlflow_run_artifact_and_alias_without_client_s3_credentials(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    # The server proxies artifacts (--serve-artifacts): the client must need no S3 access.
    for name in list(os.environ):
        if name.startswith("AWS_") or name == "MLFLOW_S3_ENDPOINT_URL":
            monkeypatch.delenv(name)
    assert http_ok(f"{mlflow_server}/health")
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    experiment_id = client.create_experiment("services-check")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "roc_auc", 0.91)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "threshold.json").write_text(json.dumps({"threshold": 1.25}))
    client.log_artifacts(run.info.run_id, str(model_dir), artifact_path="model")
    client.set_terminated(run.info.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")

    back = Path(client.download_artifacts(run.info.run_id, "model", str(tmp_path / "back")))
    assert json.loads((back / "threshold.json").read_text()) == {"threshold": 1.25}
    assert client.get_run(run.info.run_id).data.metrics["roc_auc"] == 0.91

    client.create_registered_model("services-check-model")
    version = client.create_model_version(
        "services-check-model", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    client.set_registered_model_alias("services-check-model", "champion", version.version)
    champion = client.get_model_version_by_alias("services-check-model", "champion")
    assert champion.version == version.version
    assert champion.run_id == run.info.run_id


FLOW_SCRIPT = """
from prefect import flow, task

@task
def double(x: int) -> int:
    return 2 * x

@flow(name="services-check")
def check() -> int:
    return double(21)

state = check(return_state=True)
print("RESULT", state.result(), state.state_details.flow_run_id)
"""


def test_prefect_server_runs_a_flow(prefect_server: str, tmp_path: Path) -> None:
    assert http_ok(f"{prefect_server}/health")
    # A subprocess, so this session's own Prefect settings (test harness, profile) stay as they are.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path / "prefect_home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    done = subprocess.run(
        [sys.executable, "-c", FLOW_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    _, result, flow_run_id = line.split()
    assert result == "42"
    with urllib.request.urlopen(f"{prefect_server}/flow_runs/{flow_run_id}", timeout=10) as r:
        flow_run = json.load(r)
    assert flow_run["state"]["type"] == "COMPLETED"


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `python -m deployments.cli services ...` as a separate process, like a user would."""
    return subprocess.run(
        [sys.executable, "-m", "deployments.cli", "services", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _get_status(url: str, auth: tuple[str, str] | None = None) -> int:
    import base64
    import urllib.error

    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


TRIGGER = """
import json, sys, time
from prefect.deployments import run_deployment
started = time.monotonic()
run = run_deployment("pipeline/pipeline", parameters=json.loads(sys.argv[1]), timeout=600,
                     poll_interval=2)
print(json.dumps({"state": run.state.type.value, "seconds": round(time.monotonic() - started, 1),
                  "work_pool": run.work_pool_name}))
"""


def _pynomaly(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `python -m deployments.cli ...` as a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "deployments.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _env_file(path: Path) -> dict[str, str]:
    """The variables of an env file written by `services up` (NAME=value or export ...),
    unquoted."""
    import shlex

    return {
        k: shlex.split(v)[0] if v else ""
        for k, v in (
            line.removeprefix("export ").split("=", 1)
            for line in path.read_text().splitlines()
            if "=" in line and not line.startswith("#")
        )
    }


def _champion_folder(tracking_uri: str, login: tuple[str, str], model: str, root: Path) -> Path:
    """The local folder under DIR/artifacts that holds the champion's model files."""
    from mlflow import MlflowClient

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", login[0])
        mp.setenv("MLFLOW_TRACKING_PASSWORD", login[1])
        client = MlflowClient(tracking_uri=tracking_uri)
        source = client.get_model_version_by_alias(model, "champion").source
        if source.startswith("models:/"):
            source = client.get_logged_model(source.rsplit("/", 1)[-1]).artifact_location
    assert source.startswith("mlflow-artifacts:/"), source  # proxied by the server
    folder = root / "mlflow" / source.removeprefix("mlflow-artifacts:").lstrip("/")
    assert (folder / "MLmodel").is_file(), folder
    return folder


def test_services_up_deploy_trigger_browse_down() -> None:
    """Issue 6's whole path as a user runs it, each step a separate process: services up, status,
    deploy, a triggered pipeline deployment (what the UI's Run button does) run by the worker
    that `up` started, both UIs checked in headless Chromium, services down.

    Issue 10: nothing lost, nobody in. Every component has its own PostgreSQL role and the
    clients a non-admin MLflow login; artifacts live in DIR/artifacts, private, and survive
    `down` and `up`: the champion still scores and a backup taken before the restart restores
    after it; `health` names a champion whose artifacts are gone."""
    import shutil
    import tempfile

    import mlflow
    import pandas as pd

    from deployments.demo import LABEL, build_demo_files

    root = Path(tempfile.mkdtemp(prefix="pynomaly-cli-", dir="/tmp"))
    root.chmod(0o711)  # the `postgres` user must be able to enter it
    folder = root / "services"
    # A clean environment: nothing configured, so `up` starts every service itself.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYNOMALY_", "PREFECT_", "MLFLOW_", "AWS_"))
    }
    env["PYNOMALY_HOME"] = str(root / "home")
    names = ["postgres", "mlflow", "prefect", "prefect-worker"]
    try:
        up = _cli(["up", "--dir", str(folder), "--json"], env)
        assert up.returncode == 0, up.stdout + up.stderr
        report = json.loads(up.stdout)
        # No S3 server: moto is for tests only.
        assert {n: r["status"] for n, r in report["services"].items()} == dict.fromkeys(
            names, "started"
        )

        for name in (
            "secrets.env",
            "pynomaly.env",
            "metrics.env",
            "state.json",
            "supervisord.conf",
        ):
            assert (folder / name).stat().st_mode & 0o777 == 0o600, name
        artifacts = folder / "artifacts"
        assert report["artifact_root"] == str(artifacts)
        assert artifacts.stat().st_mode & 0o777 == 0o700
        client = _env_file(folder / "pynomaly.env")
        assert client["PYNOMALY_RESULTS_DB_URL"].startswith(
            "postgresql+psycopg2://pynomaly_results:"
        )
        assert client["PYNOMALY_MLFLOW_BACKEND_URI"].startswith(
            "postgresql+psycopg2://pynomaly_mlflow:"
        )
        assert client["PYNOMALY_ARTIFACT_ROOT"] == str(artifacts)
        assert not [k for k in client if k.startswith("AWS_") or "S3" in k]
        secrets = _env_file(folder / "secrets.env")
        assert client["MLFLOW_TRACKING_USERNAME"] == "pynomaly"
        # Neither the superuser's nor the MLflow admin's password reaches a client.
        env_text = (folder / "pynomaly.env").read_text() + (folder / "metrics.env").read_text()
        for name in ("POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "PG_MLFLOW_AUTH_PASSWORD"):
            assert secrets[name] not in env_text, name

        status = _cli(["status", "--dir", str(folder), "--json"], env)
        assert status.returncode == 0, status.stdout + status.stderr
        health = json.loads(status.stdout)
        assert health["healthy"] is True
        assert all(health["services"][n]["healthy"] for n in names)
        # `up` over the running stack starts nothing.
        reused = _cli(["up", "--dir", str(folder), "--json"], env)
        assert reused.returncode == 0, reused.stdout + reused.stderr
        statuses = {n: r["status"] for n, r in json.loads(reused.stdout)["services"].items()}
        assert statuses == dict.fromkeys(names, "already running")
        assert (folder / "supervisor.sock").stat().st_mode & 0o777 == 0o700
        worker_environ = Path(f"/proc/{health['services']['prefect-worker']['pid']}/environ")
        worker_env = worker_environ.read_bytes().decode(errors="replace")
        assert "MLFLOW_TRACKING_PASSWORD=" + client["MLFLOW_TRACKING_PASSWORD"] in worker_env
        for name in ("POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD"):
            assert secrets[name] not in worker_env, name

        # Auth is on: MLflow wants the admin login, Prefect the auth string.
        mlflow_url = client["PYNOMALY_TRACKING_URI"]
        search = f"{mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
        login = (client["MLFLOW_TRACKING_USERNAME"], client["MLFLOW_TRACKING_PASSWORD"])
        assert _get_status(search) == 401
        assert _get_status(search, login) == 200
        # The platform's login is no admin: it cannot manage users; the admin can.
        from mlflow.exceptions import MlflowException
        from mlflow.server.auth.client import AuthServiceClient

        with pytest.MonkeyPatch.context() as mp, pytest.raises(MlflowException) as refused:
            mp.setenv("MLFLOW_TRACKING_USERNAME", login[0])
            mp.setenv("MLFLOW_TRACKING_PASSWORD", login[1])
            AuthServiceClient(mlflow_url).create_user("intruder", "intruder-password-1")
        assert refused.value.error_code == "PERMISSION_DENIED"
        assert (
            _get_status(
                f"{mlflow_url}/api/2.0/mlflow/users/get?username=pynomaly",
                ("admin", secrets["MLFLOW_ADMIN_PASSWORD"]),
            )
            == 200
        )
        prefect_url = client["PREFECT_API_URL"]
        assert _get_status(f"{prefect_url}/work_pools/pynomaly-process") == 401
        prefect_login = tuple(client["PREFECT_API_AUTH_STRING"].split(":", 1))
        assert _get_status(f"{prefect_url}/work_pools/pynomaly-process", prefect_login) == 200

        # Deploy and trigger with the settings `source pynomaly.env` gives a shell
        user_env = {**env, **client}
        deployed = subprocess.run(
            [sys.executable, "-m", "deployments.cli", "deploy", "--name", "pipeline", "--json"],
            env=user_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert [d["name"] for d in json.loads(deployed.stdout)["deployments"]] == [
            "pipeline/pipeline"
        ]
        files = build_demo_files(root / "demo")
        model = "services-demo"
        parameters = {
            "source": str(files["train"]),
            "model": model,
            "score_source": str(files["batch"]),
            "label_column": LABEL,
            "time_budget_s": 5.0,
        }
        triggered = subprocess.run(
            [sys.executable, "-c", TRIGGER, json.dumps(parameters)],
            env=user_env,
            capture_output=True,
            text=True,
            timeout=700,
        )
        assert triggered.returncode == 0, triggered.stdout + triggered.stderr
        run = json.loads(triggered.stdout.strip().splitlines()[-1])
        assert run["state"] == "COMPLETED" and run["work_pool"] == "pynomaly-process", run
        print(f"triggered pipeline deployment completed in {run['seconds']} s")
        mlflow_client = mlflow.MlflowClient(tracking_uri=mlflow_url)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_USERNAME", client["MLFLOW_TRACKING_USERNAME"])
            mp.setenv("MLFLOW_TRACKING_PASSWORD", client["MLFLOW_TRACKING_PASSWORD"])
            assert mlflow_client.get_model_version_by_alias(model, "champion").version == "1"

        # Both UIs in headless Chromium: the deployments, the model with its champion alias
        shots = root / "shots"
        browsed = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve().parents[2] / "scripts" / "browser_check.py"),
                "--env-file",
                str(folder / "pynomaly.env"),
                "--model",
                model,
                "--out",
                str(shots),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert browsed.returncode == 0, browsed.stdout + browsed.stderr
        checks = json.loads(browsed.stdout)["checks"]
        for check in checks.values():
            assert Path(check["screenshot"]).stat().st_size > 10_000, check

        # Least privilege in PostgreSQL: the results role reaches no other database, the
        # metrics role only reads, no component role is a superuser.
        import psycopg2
        import sqlalchemy as sa

        port = json.loads(status.stdout)["services"]["postgres"]["port"]
        with pytest.raises(psycopg2.OperationalError, match="permission denied"):
            psycopg2.connect(
                host="127.0.0.1",
                port=port,
                user="pynomaly_results",
                password=secrets["PG_RESULTS_PASSWORD"],
                dbname="mlflow",
            ).close()
        metrics = _env_file(folder / "metrics.env")
        reader = sa.create_engine(metrics["PYNOMALY_RESULTS_DB_URL"])
        with reader.connect() as conn:
            scored = conn.execute(sa.text("SELECT count(*) FROM detection_results")).scalar()
        assert scored > 0
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            with reader.begin() as conn:
                conn.execute(sa.text("DELETE FROM detection_results"))
        reader.dispose()
        superuser = sa.create_engine(
            f"postgresql+psycopg2://postgres:{secrets['POSTGRES_PASSWORD']}@127.0.0.1:{port}/postgres"
        )
        with superuser.connect() as conn:
            supers = conn.execute(sa.text("SELECT rolname FROM pg_roles WHERE rolsuper")).all()
            owners = dict(
                conn.execute(
                    sa.text(
                        "SELECT datname, pg_get_userbyid(datdba) FROM pg_database "
                        "WHERE datname IN ('mlflow', 'mlflow_auth', 'prefect', 'pynomaly_results')"
                    )
                ).all()
            )
        superuser.dispose()
        assert [r[0] for r in supers] == ["postgres"]
        assert owners == {
            "mlflow": "pynomaly_mlflow",
            "mlflow_auth": "pynomaly_mlflow_auth",
            "prefect": "pynomaly_prefect",
            "pynomaly_results": "pynomaly_results",
        }

        # Artifacts: in DIR/artifacts, private, and what the worker made in the home too
        login = (client["MLFLOW_TRACKING_USERNAME"], client["MLFLOW_TRACKING_PASSWORD"])
        champion_folder = _champion_folder(mlflow_url, login, model, artifacts)
        home = root / "home"
        assert home.stat().st_mode & 0o777 == 0o700
        readable = [
            str(p)
            for base in (artifacts, home, folder / "mlflow", folder / "prefect")
            for p in base.rglob("*")
            if not p.is_symlink() and p.stat().st_mode & 0o077
        ]
        assert readable == []

        # A backup, then services down and up: the champion still loads and scores
        backed = _pynomaly(["backup", "create", "--json"], user_env)
        assert backed.returncode == 0, backed.stdout + backed.stderr
        backup_id = json.loads(backed.stdout)["id"]
        down = _cli(["down", "--dir", str(folder), "--json"], env)
        assert down.returncode == 0, down.stdout + down.stderr
        again = _cli(["up", "--dir", str(folder), "--json"], env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert json.loads(again.stdout)["artifact_root"] == str(artifacts)
        client = _env_file(folder / "pynomaly.env")
        user_env = {**env, **client}
        rescored = _pynomaly(
            [
                "score",
                str(files["batch"]),
                "--model",
                model,
                "--batch-id",
                "after-restart",
                "--json",
            ],
            user_env,
        )
        assert rescored.returncode == 0, rescored.stdout + rescored.stderr
        results = sa.create_engine(client["PYNOMALY_RESULTS_DB_URL"])
        with results.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT count(*) FROM detection_results WHERE batch_id = 'after-restart'")
            ).scalar()
        results.dispose()
        assert rows == len(pd.read_csv(files["batch"]))
        healthy = _pynomaly(["health", "--json"], user_env)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert json.loads(healthy.stdout)["checks"][f"champion:{model}"]["ok"] is True

        # ... and the backup taken before the restart restores after it
        restored = _pynomaly(["backup", "restore", backup_id, "--yes", "--json"], user_env)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert json.loads(restored.stdout)["verification"]["champions_checked"] == 1

        # A champion whose artifacts are gone makes `health` fail, naming the model
        shutil.rmtree(champion_folder)
        broken = _pynomaly(["health", "--json"], user_env)
        assert broken.returncode == 1, broken.stdout + broken.stderr
        check = json.loads(broken.stdout)["checks"][f"champion:{model}"]
        assert check["ok"] is False and model in check["detail"], check
        broken_text = _pynomaly(["health"], user_env)
        assert broken_text.returncode == 1
        assert f"champion:{model}" in broken_text.stdout

        status = _cli(["status", "--dir", str(folder), "--json"], env)
        health = json.loads(status.stdout)
        pids = {n: health["services"][n]["pid"] for n in names}
        down = _cli(["down", "--dir", str(folder), "--json"], env)
        assert down.returncode == 0, down.stdout + down.stderr
        assert json.loads(down.stdout) == {
            "dir": str(folder),
            "stopped": names[::-1],
            "remaining": {},
        }
        assert [n for n, p in pids.items() if psutil.pid_exists(p)] == []
        assert not (folder / "supervisor.sock").exists()

        # Secrets stay in the 0600 files: none of them was printed.
        printed = up.stdout + up.stderr + again.stdout + status.stdout + down.stdout
        secret_values = [
            line.split("=", 1)[1]
            for line in (folder / "secrets.env").read_text().splitlines()
            if "=" in line and not line.startswith("#")
        ]
        assert secret_values and not [s for s in secret_values if s in printed]
    finally:
        _cli(["down", "--dir", str(folder)], env)
        shutil.rmtree(root, ignore_errors=True)
