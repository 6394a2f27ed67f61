"""Scale-out on a real Dask cluster: a `dask scheduler` and two `dask worker` processes on
loopback score one batch in partitions and run AutoML trials on one shared Optuna study."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import sqlalchemy as sa
from pyod.utils.data import generate_data
from typer.testing import CliRunner

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASK = Path(sys.executable).with_name("dask")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dask_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of a scheduler with two one-thread worker processes, killed at teardown."""
    from distributed import Client

    logs = tmp_path_factory.mktemp("dask")
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    port = address.rsplit(":", 1)[1]
    worker = [str(DASK), "worker", address, "--nthreads", "1", "--no-dashboard"]
    commands = [
        [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
        worker,
        worker,
    ]
    procs = []
    for i, command in enumerate(commands):
        log = open(logs / f"{i}.log", "wb")  # noqa: SIM115 - closed with its process
        procs.append((subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log), log))
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            assert len(client.scheduler_info()["workers"]) == 2
        yield address
    finally:
        for proc, log in reversed(procs):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def stored(results_url: str, batch_id: str) -> pd.DataFrame:
    from tasks.results import detection_results

    t = detection_results
    query = (
        sa.select(t.c.row_index, t.c.score, t.c.is_anomaly, t.c.model_version)
        .where(t.c.batch_id == batch_id)
        .order_by(t.c.row_index)
    )
    engine = sa.create_engine(results_url)
    try:
        with engine.connect() as conn:
            return pd.read_sql(query, conn)
    finally:
        engine.dispose()


def test_partitioned_scoring_on_two_workers_equals_one_process(
    dask_address: str, platform_home: Path, prefect_harness: None
) -> None:
    from flows.score_batch import score_batch
    from flows.train_detector import train_detector
    from pynomaly.settings import get_settings

    rng = np.random.default_rng(7)
    columns = [f"f{i}" for i in range(5)]
    train = platform_home.parent / "train.csv"
    batch = platform_home.parent / "batch.parquet"
    pd.DataFrame(rng.normal(size=(1500, 5)), columns=columns).to_csv(train, index=False)
    pd.DataFrame(rng.normal(size=(20_000, 5)), columns=columns).to_parquet(batch)
    train_detector(str(train), "scaled", detector="iforest")

    one = score_batch(str(batch), "scaled", batch_id="one-process")
    spread = score_batch(
        str(batch), "scaled", batch_id="on-dask", dask=dask_address, partition_rows=1500
    )
    again = score_batch(
        str(batch), "scaled", batch_id="on-dask", dask=dask_address, partition_rows=1500
    )

    url = get_settings().results_url
    expected, got, rescored = (stored(url, b) for b in ("one-process", "on-dask", "on-dask"))
    assert spread["rows_scored"] == spread["rows_stored"] == one["rows_stored"] == 20_000
    assert spread["anomalies"] == one["anomalies"] == again["anomalies"]
    assert spread["dask"]["partitions"] == 14  # ceil(20,000 / 1,500)
    np.testing.assert_array_equal(got["row_index"], expected["row_index"])
    np.testing.assert_array_equal(got["is_anomaly"], expected["is_anomaly"])
    np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-12)
    # Re-scoring the same batch id replaces its rows: none duplicated, none lost
    assert again["rows_stored"] == 20_000
    pd.testing.assert_frame_equal(rescored, got)
    # Both workers scored partitions, and every row once
    by_worker = spread["dask"]["rows_by_worker"]
    assert len(by_worker) == 2 and all(a.startswith("tcp://127.0.0.1:") for a in by_worker)
    assert sum(by_worker.values()) == 20_000 and min(by_worker.values()) > 0


@pytest.mark.parametrize("backend", ["postgresql", "journal"])
def test_automl_trials_of_both_workers_share_one_study(
    dask_address: str, backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from tasks.automl import fit_best_detector, open_storage

    storage = (
        request.getfixturevalue("pg_url")
        if backend == "postgresql"
        else str(tmp_path / "trials.journal")
    )
    x, _, y, _ = generate_data(
        n_train=300, n_test=10, n_features=4, contamination=0.1, random_state=3
    )
    model = fit_best_detector(
        x,
        y.astype(int),
        time_budget_s=120,
        n_trials=10,
        storage=storage,
        dask=dask_address,
        study_name="dask-study",
    )
    study = optuna.load_study(study_name="dask-study", storage=open_storage(storage))
    board = model.leaderboard_
    # One trial loop per worker thread (two), each on its own Dask worker, in one study
    ran_on = {k: v for k, v in study.user_attrs.items() if k.startswith("dask_worker_")}
    assert set(ran_on) == {"dask_worker_0", "dask_worker_1"}
    assert len(set(ran_on.values())) == 2
    assert set(board["worker"]) == {0, 1}
    assert len(board) == len(study.trials) and 10 <= len(study.trials) <= 11
    assert model.best_config_["trial"] in set(board["number"])


def test_unreachable_or_malformed_address_is_one_line_exit_2(platform_home: Path) -> None:
    from deployments.cli import app
    from pynomaly.errors import InputError
    from tasks.scaleout import check_reachable

    with pytest.raises(InputError, match=r"--dask tcp://127\.0\.0\.1:\d+: no Dask scheduler"):
        check_reachable(f"tcp://127.0.0.1:{free_port()}", timeout=2)
    batch = platform_home.parent / "batch.csv"
    batch.write_text("a,b\n1,2\n")
    result = CliRunner().invoke(
        app, ["score", str(batch), "--model", "m", "--dask", "not an address"]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --dask 'not an address': not a scheduler address (tcp://HOST:PORT) or 'local'"
    ]


def test_worker_reads_its_row_range_of_a_snapshot_on_s3(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    from tasks.scaleout import read_rows
    from tasks.store import ArtifactStore

    frame = pd.DataFrame({"a": np.arange(1000.0), "b": -np.arange(1000.0)})
    local = tmp_path / "s.parquet"
    frame.to_parquet(local, index=False, row_group_size=128)
    store = ArtifactStore(f"s3://{s3_bucket}/root", s3_endpoint)
    store.put_file("datasets/d/s.parquet", local)

    chunks = list(read_rows(store.uri("datasets/d/s.parquet"), s3_endpoint, 300, 700, 100))
    got = pd.concat(chunks)
    assert list(got.index) == list(range(300, 700)) and all(len(c) <= 100 for c in chunks)
    pd.testing.assert_frame_equal(got, frame.iloc[300:700], check_index_type=False)
