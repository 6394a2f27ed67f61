"""Two processes promoting at once leave exactly one new champion, under each kind of lock: a file
lock (embedded SQLite), a PostgreSQL advisory lock, and a Prefect global concurrency limit (MLflow
tracking server).

Each process was told the champion is v1 when its challenger was judged; the lock serialises
them, and inside it the second sees the champion has changed and refuses.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

MODEL = "locked"


def register_versions(tracking_uri: str, artifacts: Path, count: int) -> None:
    """v1 champion plus `count - 1` plain versions of a tiny sklearn detector."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.ensemble import IsolationForest

    from registry.tracking import ensure_experiment
    from registry.versions import CHAMPION, client

    mlflow_client = client(tracking_uri)
    experiment_id = ensure_experiment("lock-test", tracking_uri, str(artifacts))
    mlflow.set_tracking_uri(tracking_uri)  # the fluent logging below (library code never sets it)
    x = pd.DataFrame(np.random.default_rng(0).normal(size=(60, 2)), columns=["a", "b"])
    mlflow_client.create_registered_model(MODEL)
    for seed in range(count):
        model = IsolationForest(n_estimators=5, random_state=seed, contamination=0.1).fit(x)
        with mlflow.start_run(experiment_id=experiment_id) as run:
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(x, model.decision_function(x)),
                skops_trusted_types=["sklearn.tree._tree.Tree"],
            )
        mv = mlflow_client.create_model_version(
            MODEL, info.model_uri, run_id=run.info.run_id, model_id=info.model_id
        )
        if seed == 0:
            mlflow_client.set_registered_model_alias(MODEL, CHAMPION, mv.version)


def promote_worker(
    tracking_uri: str,
    lock_dir: str,
    prefect_server: bool,
    version: int,
    barrier: object,
    results: object,
) -> None:
    """Promote one version, starting together with the other worker."""
    from registry.promotion import PromotionConflict, promote
    from registry.versions import client

    mlflow_client = client(tracking_uri)
    barrier.wait(timeout=120)
    try:
        promote(
            mlflow_client,
            tracking_uri,
            MODEL,
            version,
            expected_champion=1,
            lock_dir=Path(lock_dir),
            reason=f"worker {version}",
            prefect_server=prefect_server,
        )
        results.put((version, "promoted"))
    except PromotionConflict as exc:
        results.put((version, f"conflict: {exc}"))
    except Exception as exc:  # reported to the test, never swallowed
        results.put((version, f"error: {type(exc).__name__}: {exc}"))


def race(tracking_uri: str, lock_dir: Path, prefect_server: bool = False) -> dict[int, str]:
    ctx = mp.get_context("spawn")  # a fresh interpreter each: no inherited DB connections
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [
        ctx.Process(
            target=promote_worker,
            args=(tracking_uri, str(lock_dir), prefect_server, v, barrier, results),
        )
        for v in (2, 3)
    ]
    for w in workers:
        w.start()
    outcome = dict(results.get(timeout=240) for _ in workers)
    for w in workers:
        w.join(timeout=60)
    return outcome


def check_one_winner(tracking_uri: str, outcome: dict[int, str]) -> None:
    from registry.promotion import read_history
    from registry.versions import CHAMPION, aliases_of, client

    winners = [v for v, status in outcome.items() if status == "promoted"]
    losers = [v for v, status in outcome.items() if status.startswith("conflict")]
    assert len(winners) == 1 and len(losers) == 1, outcome
    mlflow_client = client(tracking_uri)
    assert aliases_of(mlflow_client, MODEL)[CHAMPION] == winners[0]
    history = read_history(mlflow_client, MODEL)
    assert [e["version"] for e in history] == [1, winners[0]]
    assert "changed from v1" in outcome[losers[0]]


def test_two_processes_on_embedded_sqlite(tmp_path: Path) -> None:
    from registry.promotion import lock_kind

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert lock_kind(uri) == "file"
    register_versions(uri, tmp_path / "artifacts", 3)
    check_one_winner(uri, race(uri, tmp_path))


@pytest.mark.integration
def test_two_processes_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    from registry.promotion import lock_kind

    assert lock_kind(pg_url) == "postgres"
    register_versions(pg_url, tmp_path / "artifacts", 3)
    check_one_winner(pg_url, race(pg_url, tmp_path))


@pytest.mark.integration
def test_two_processes_through_prefect_global_concurrency(
    mlflow_server: str, prefect_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An MLflow tracking server has no lock of its own: the Prefect server's limit serialises."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from registry.promotion import lock_kind

    # Spawned workers read the Prefect server from their environment, as flow runs do.
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    assert lock_kind(mlflow_server) == "file"  # no Prefect server named by the caller
    assert lock_kind(mlflow_server, prefect_server=True) == "prefect"
    register_versions(mlflow_server, tmp_path / "artifacts", 3)
    check_one_winner(mlflow_server, race(mlflow_server, tmp_path, prefect_server=True))
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as prefect_client:
            limit = prefect_client.read_global_concurrency_limit_by_name(
                f"pynomaly-promote-{MODEL}"
            )
    # Both promotions went through the limit, and it is free again afterwards.
    assert limit.limit == 1 and limit.active_slots == 0
