"""Drift on a server, end to end: check_drift emits `pynomaly.drift.detected`, the automation
that `pynomaly deploy` registered (the retrain deployment's trigger in prefect.yaml) runs the
retrain deployment for that model, a process worker executes it, and a drift-triggered
challenger appears in the MLflow registry."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import servers

from deployments import deploy

pytestmark = pytest.mark.integration

RUN_TIMEOUT_S = 600
FEATURES = ["a", "b", "c", "d"]


def write_frame(path: Path, seed: int, n: int, shift: float = 0.0) -> str:
    """Normal rows around 0 with ~8 % far-out anomalies, every row moved by `shift`."""
    rng = np.random.default_rng(seed)
    far = (rng.random(n) < 0.08)[:, None] * rng.choice([-4.0, 4.0], (n, 1))
    frame = pd.DataFrame(rng.normal(size=(n, len(FEATURES))) + far + shift, columns=FEATURES)
    frame.to_csv(path, index=False)
    return str(path)


def drift_retrain_runs(client, deployment_id) -> list:
    """Runs of the retrain deployment started by a drift event (not its weekly schedule)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    )
    return [r for r in runs if r.parameters.get("trigger") == "drift"]


def test_drift_event_runs_the_retrain_deployment(
    prefect_server: str,
    mlflow_server: str,
    pg_url: str,
    services_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    production_env,
) -> None:
    import mlflow
    from prefect import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.clients import PrefectEventsClient
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.check_drift import DRIFT_EVENT, check_drift
    from flows.train_detector import train_detector
    from pynomaly.settings import get_settings

    work = services_root / f"drift-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    model = f"drift-{uuid.uuid4().hex[:8]}"
    platform_env = production_env(work / "home")
    for key, value in {**platform_env, "PYNOMALY_MODEL": model}.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    train = write_frame(work / "train.csv", 0, 400)
    shifted = write_frame(work / "shifted.csv", 2, 250, shift=2.5)

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        deploy.register(names=["retrain"])  # twice: a re-deploy replaces the automation
        deployed = deploy.register(names=["retrain"])
        assert deployed["automation"]["name"] == "pynomaly-retrain-on-drift"
        assert deployed["automation"]["event"] == DRIFT_EVENT
        retrain_id = deployed["deployments"][0]["id"]

        assert train_detector(train, model, detector="iforest")["version"] == 1
        worker = servers.start_prefect_worker(
            work, prefect_server, deploy.WORK_POOL, extra_env=platform_env, query_seconds=2
        )
        try:
            started = time.monotonic()
            # One process, one API in production; this test session also ran flows on the
            # harness's server, and Prefect's events worker is a process-wide singleton bound
            # to the API of its first use: point a separate one at this server.
            EventsWorker.set_client_override(PrefectEventsClient, api_url=prefect_server)
            try:
                result = check_drift(shifted, model, trigger="event")
                EventsWorker.drain_all(timeout=30)  # a flow run's process drains it at exit
            finally:
                EventsWorker.set_client_override(None)
            assert result["drift_detected"], result
            assert result["retrain"] == {"status": "event emitted", "event": DRIFT_EVENT}

            # The automation creates a run of the retrain deployment; the worker executes it.
            with get_client(sync_client=True) as client:
                runs: list = []
                while time.monotonic() - started < RUN_TIMEOUT_S:
                    runs = drift_retrain_runs(client, retrain_id)
                    if runs and all(r.state and r.state.is_final() for r in runs):
                        break
                    time.sleep(2)
            seconds = time.monotonic() - started
        finally:
            worker.stop()

    # Exactly one retrain, for the model named in the event, marked as drift-triggered
    assert len(runs) == 1, [(r.name, r.state) for r in runs]
    (run,) = runs
    assert run.state is not None and run.state.type == StateType.COMPLETED, (
        f"retrain run ended {run.state!r} after {seconds:.0f} s; worker log:\n"
        f"{servers.log_tail(worker.log, 60)}"
    )
    assert run.parameters == {"model": model, "trigger": "drift"}
    print(f"drift event -> completed retrain in {seconds:.1f} s")

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    challenger = client.get_model_version(model, "2")
    assert challenger.tags["retrain_trigger"] == "drift"
    assert "gate.decision" in challenger.tags
