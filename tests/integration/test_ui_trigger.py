"""What the UI's Run button does, end to end: deploy the pipeline to a real Prefect server, run it
with custom parameters through the API, let a process worker execute it, then find the model in
MLflow and the scores in PostgreSQL."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import servers

from deployments import deploy

pytestmark = pytest.mark.integration

RUN_TIMEOUT_S = 600


def test_triggered_pipeline_run_registers_and_scores(
    prefect_server: str,
    mlflow_server: str,
    pg_url: str,
    services_root: Path,
    production_env,
) -> None:
    import mlflow
    import sqlalchemy as sa
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.demo import LABEL, build_demo_files

    work = services_root / f"ui-trigger-{uuid.uuid4().hex[:8]}"
    files = build_demo_files(work / "demo")
    model = f"ui-{uuid.uuid4().hex[:8]}"
    batch_id = f"ui-batch-{uuid.uuid4().hex[:8]}"
    batch_rows = sum(1 for _ in files["batch"].open()) - 1

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        # Deploy: prefect.yaml's pipeline deployment, the process pool created on the way
        deployed = deploy.register(names=["pipeline"])
        assert [d["name"] for d in deployed["deployments"]] == ["pipeline/pipeline"]
        assert deployed["deployments"][0]["work_pool"] == deploy.WORK_POOL

        # The worker's flow runs get the platform's settings from its environment only
        worker = servers.start_prefect_worker(
            work,
            prefect_server,
            deploy.WORK_POOL,
            extra_env=production_env(work / "home"),
            query_seconds=2,
        )
        try:
            # Trigger: the Run button creates a flow run of the deployment with form values
            started = time.monotonic()
            flow_run = run_deployment(
                "pipeline/pipeline",
                parameters={
                    "source": str(files["train"]),
                    "model": model,
                    "score_source": str(files["batch"]),
                    "label_column": LABEL,
                    "time_budget_s": 5.0,
                    "batch_id": batch_id,
                },
                timeout=RUN_TIMEOUT_S,
                poll_interval=2,
            )
            seconds = time.monotonic() - started
        finally:
            worker.stop()
        state = flow_run.state
        assert state is not None and state.type == StateType.COMPLETED, (
            f"flow run ended {state!r} after {seconds:.0f} s; worker log:\n"
            f"{servers.log_tail(worker.log, 60)}"
        )
        assert flow_run.work_pool_name == deploy.WORK_POOL
        assert flow_run.parameters["time_budget_s"] == 5.0
        print(f"triggered pipeline run completed in {seconds:.1f} s")

    # The model is registered on the MLflow server, champion as the first version
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    champion = client.get_model_version_by_alias(model, "champion")
    assert champion.version == "1"
    assert champion.tags["dataset_rows"] == str(sum(1 for _ in files["train"].open()) - 1)

    # Every batch row is scored into detection_results on PostgreSQL
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT count(*), count(DISTINCT row_index) FROM detection_results "
                    "WHERE batch_id = :batch"
                ),
                {"batch": batch_id},
            ).one()
    finally:
        engine.dispose()
    assert tuple(rows) == (batch_rows, batch_rows)
