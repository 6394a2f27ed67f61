"""A train killed at any point leaves nothing the next command does not repair.

Each kill state is produced by the real train flow in a child process that dies (os._exit, no
cleanup, as under kill -9) at one precise call: before the model is logged (its run is left
RUNNING), before the version gets its alias, just after a first version became champion, or
before a challenger's gate. One test kills a real `pynomaly train` with SIGKILL. The next
command is the real flow (or CLI) in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from deployments.cli.registry import registry_app
from pynomaly.errors import InputError
from pynomaly.settings import get_settings

PYNOMALY = str(Path(sys.executable).with_name("pynomaly"))

# Replace one callable by one that ends the process, before or after calling the original.
DRIVER = """
import importlib, os, sys

target, when, flow, source = sys.argv[1:5]
parts = target.split(".")
for cut in range(len(parts) - 1, 0, -1):
    try:
        holder = importlib.import_module(".".join(parts[:cut]))
        break
    except ImportError:
        continue
for attr in parts[cut:-1]:
    holder = getattr(holder, attr)
original = getattr(holder, parts[-1])


def killed(*args, **kwargs):
    if when == "after":
        original(*args, **kwargs)
    os._exit(137)  # no finally, no atexit: what SIGKILL leaves


setattr(holder, parts[-1], killed)
if flow == "train":
    from flows.train_detector import train_detector

    train_detector(source, "m", label_column="y")
else:
    from flows.retrain_detector import retrain_detector

    retrain_detector("m", source, trigger="schedule", time_budget_s=5)
sys.exit(3)  # the kill point was never reached
"""


@pytest.fixture
def files(tmp_path: Path, platform_home: Path) -> dict[str, str]:
    """A labelled training file (~8% far-out anomalies) and an unlabelled fresh batch."""
    rng = np.random.default_rng(0)
    out = {}
    for name, n in (("train", 400), ("fresh", 250)):
        y = (rng.random(n) < 0.08).astype(int)
        x = rng.normal(size=(n, 4)) + 4.0 * y[:, None] * rng.choice([-1, 1], (n, 1))
        frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
        if name == "train":
            frame["y"] = y
        out[name] = str(tmp_path / f"{name}.csv")
        frame.to_csv(out[name], index=False)
    return out


def child_env() -> dict[str, str]:
    """This test's platform home, and the session's Prefect API (no ephemeral server)."""
    from prefect.settings import PREFECT_API_URL

    return {
        **os.environ,
        "PYNOMALY_HOME": str(get_settings().home_dir),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
    }


def killed_at(target: str, when: str, source: str, flow: str = "train") -> None:
    """Run the flow in a child process that dies at `target` (before or after it runs)."""
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, target, when, flow, source],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 137, done.stderr[-3000:]


def mlflow_client():
    from registry.versions import client

    return client(get_settings().mlflow_tracking_uri)


def train_runs() -> list:
    """Every run of the experiment, oldest first."""
    c = mlflow_client()
    experiment = c.get_experiment_by_name(get_settings().experiment)
    runs = c.search_runs([experiment.experiment_id], max_results=1000)
    return sorted(runs, key=lambda r: r.info.start_time)


def versions() -> dict[int, dict[str, str]]:
    """version -> tags of model m."""
    found = mlflow_client().search_model_versions("name = 'm'")
    return {int(mv.version): dict(mv.tags or {}) for mv in found}


def aliases() -> dict[str, int]:
    from registry.versions import aliases_of

    return aliases_of(mlflow_client(), "m")


def listed() -> dict:
    out = CliRunner().invoke(registry_app, ["list", "--json"])
    assert out.exit_code == 0, out.output
    return next(m for m in json.loads(out.stdout)["models"] if m["name"] == "m")


def test_a_run_left_running_by_a_killed_train_is_marked_killed(files):
    from flows.train_detector import train_detector
    from registry.tracking import start_run

    killed_at("registry.tracking.log_training", "before", files["train"])
    (dead,) = train_runs()
    assert dead.info.status == "RUNNING" and "m" not in {m["name"] for m in _models()}
    # A run of a live process (this one) is someone's training in progress: left alone.
    experiment = dead.info.experiment_id
    live = start_run(get_settings().mlflow_tracking_uri, experiment, "train-other", {})

    out = train_detector(files["train"], "m", label_column="y")
    runs = {r.info.run_id: r for r in train_runs()}
    assert runs[dead.info.run_id].info.status == "KILLED"
    assert runs[live].info.status == "RUNNING"
    assert runs[out["run_id"]].info.status == "FINISHED"
    assert (out["version"], out["alias"]) == (1, "champion")


def _models() -> list[dict]:
    return json.loads(CliRunner().invoke(registry_app, ["list", "--json"]).stdout)["models"]


def test_a_first_version_killed_before_its_alias_is_never_served_and_is_removed(files):
    from flows.train_detector import train_detector
    from registry.versions import resolve_version

    killed_at("mlflow.MlflowClient.set_registered_model_alias", "before", files["train"])
    assert list(versions()) == [1] and aliases() == {}
    # Before any repair: not served by number, not counted.
    with pytest.raises(InputError, match="half-registered"):
        resolve_version(mlflow_client(), "m", version=1)
    assert listed()["versions"] == 0

    out = train_detector(files["train"], "m", label_column="y")
    assert (out["version"], out["alias"]) == (2, "champion")
    assert list(versions()) == [2] and aliases() == {"champion": 2}
    assert listed()["versions"] == 1
    (half,) = [r for r in train_runs() if r.info.run_id != out["run_id"]]
    assert half.data.tags["pynomaly.unregistered"].startswith("m v1: its train (")
    shown = json.loads(CliRunner().invoke(registry_app, ["show", "m", "--json"]).stdout)
    assert [(e["version"], e["action"]) for e in shown["repairs"]] == [(1, "removed")]
    assert versions()[2]["pynomaly.complete"] == "true"


def test_a_champion_killed_after_its_alias_is_kept_and_completed(files):
    from flows.train_detector import train_detector

    killed_at("mlflow.MlflowClient.set_registered_model_alias", "after", files["train"])
    assert aliases() == {"champion": 1} and "pynomaly.complete" not in versions()[1]

    out = train_detector(files["train"], "m", label_column="y")
    # v1 became champion exactly as the flow makes a first version champion: it is kept,
    # completed, and v2 is gated against it.
    assert versions()[1]["pynomaly.complete"] == "true"
    assert out["version"] == 2 and out["gate"]["champion_version"] == 1
    assert aliases()["champion"] in {1, 2} and listed()["versions"] == 2


def test_a_challenger_killed_before_its_gate_is_never_served_and_is_removed(files):
    from flows.train_detector import train_detector
    from registry.promotion import rollback
    from registry.versions import resolve_version

    train_detector(files["train"], "m", label_column="y")
    killed_at("flows.evaluate_model.evaluate_model", "before", files["train"])
    assert aliases() == {"champion": 1, "challenger": 2}
    assert "gate.decision" not in versions()[2]
    with pytest.raises(InputError, match="v2 was left half-registered"):
        resolve_version(mlflow_client(), "m", alias="challenger")
    assert listed()["versions"] == 1 and listed()["latest"] == 1

    # A registry command on the model repairs it too (here a rollback, refused: v1 is the
    # first champion).
    settings = get_settings()
    with pytest.raises(InputError, match="nothing to roll back"):
        rollback(
            mlflow_client(), settings.mlflow_tracking_uri, "m", to=None, lock_dir=settings.home_dir
        )
    assert list(versions()) == [1] and aliases() == {"champion": 1}

    out = train_detector(files["train"], "m", label_column="y")
    assert out["version"] == 3 and out["gate"]["champion_version"] == 1


def test_a_train_failing_after_registration_takes_its_version_back(files, monkeypatch):
    import flows.evaluate_model
    from flows.train_detector import train_detector

    first = train_detector(files["train"], "m", label_column="y")

    def broken_gate(*args, **kwargs):
        raise InputError("the gate could not read its evaluation data")

    monkeypatch.setattr(flows.evaluate_model, "evaluate_model", broken_gate)
    with pytest.raises(InputError, match="evaluation data"):
        train_detector(files["train"], "m", label_column="y")
    assert list(versions()) == [1] and aliases() == {"champion": 1}
    failed = [r for r in train_runs() if r.info.run_id != first["run_id"]]
    assert [r.data.tags["pynomaly.unregistered"] for r in failed] == [
        "m v2: its train failed (InputError)"
    ]


def test_a_killed_retrain_holds_no_cooldown(files):
    from flows.retrain_detector import retrain_detector
    from flows.train_detector import train_detector
    from registry.promotion import read_retrains

    train_detector(files["train"], "m", label_column="y")
    killed_at("registry.tracking.log_training", "before", files["fresh"], flow="retrain")
    assert [e["status"] for e in read_retrains(mlflow_client(), "m")] == ["started"]

    done = retrain_detector("m", files["fresh"], trigger="schedule", time_budget_s=5)
    assert done["status"] == "done" and done["version"] == 2
    assert [e["status"] for e in read_retrains(mlflow_client(), "m")] == ["killed", "done"]
    assert all(r.info.status != "RUNNING" for r in train_runs())


def test_kill_9_of_pynomaly_train_during_the_gate_is_repaired_by_the_next_train(files):
    """A real `pynomaly train` killed with SIGKILL once its version is registered."""
    from flows.train_detector import train_detector

    train_detector(files["train"], "m", label_column="y")
    command = [PYNOMALY, "train", files["train"], "--model", "m", "--label-column", "y"]
    child = subprocess.Popen(
        command, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 240
        while 2 not in versions():
            assert child.poll() is None, child.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "v2 was never registered"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # The kill landed while the challenger was registered but its train had not finished.
    assert "pynomaly.complete" not in versions()[2]

    again = subprocess.run(
        [*command, "--json"], env=child_env(), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    out = json.loads(again.stdout)
    assert out["version"] == 3
    assert sorted(versions()) == [1, 3]  # v2 removed
    assert all(tags.get("pynomaly.complete") == "true" for tags in versions().values())
    assert aliases()["champion"] in {1, 3} and set(aliases()) <= {"champion", "challenger"}
    assert listed()["versions"] == 2
    assert all(r.info.status != "RUNNING" for r in train_runs())
