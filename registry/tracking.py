"""Log a training run to MLflow: parameters, metrics, plots, the pyfunc model, lineage tags."""

from __future__ import annotations

import io
import os
import pickle
import socket
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.models import infer_signature

from registry.model import DetectorModel

INPUT_EXAMPLE_ROWS = 5
# The process that opened a run or registered a version, as `host:pid:start`: the next command
# can then tell a run or version still being written from one a killed process left behind.
OWNER_TAG = "pynomaly.owner"


def _started(pid: int) -> str:
    """When a process started (clock ticks since boot, from /proc), "" where /proc has no such
    process or does not exist; a zombie counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rfind(")") + 2 :].split()
    return "" if fields[0] in {"Z", "X"} else fields[19]


def owner() -> str:
    """This process as `host:pid:start`; the start time tells a reused pid from the original."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_started(pid)}"


def owner_alive(value: str) -> bool | None:
    """Whether the process an owner tag names still runs: None when it ran on another host
    (this host cannot know, so nothing is repaired on its behalf)."""
    parts = value.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    host, pid, started = parts[0], int(parts[1]), parts[2]
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    if started and _started(pid) != started:
        return False  # a zombie, or the pid now belongs to another process
    return True


def code_version() -> str:
    """Package version plus the git commit of the code, when it runs from a checkout."""
    try:
        version = metadata.version("pynomaly")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit}" if commit else version


def is_tracking_server(tracking_uri: str) -> bool:
    """Whether MLflow is a tracking server (it places artifacts; its database is not ours)."""
    return tracking_uri.startswith(("http://", "https://", "databricks"))


def ensure_experiment(name: str, tracking_uri: str, artifact_root: str) -> str:
    """Experiment id, creating it with artifacts under `<artifact_root>/mlflow` if missing.

    With a tracking server (http URI) the server decides where artifacts go (it may proxy
    them with --serve-artifacts), so no location is forced then.
    """
    mlflow_client = MlflowClient(tracking_uri)
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if not is_tracking_server(tracking_uri):
        location = f"{artifact_root.rstrip('/')}/mlflow"
        if not location.startswith("s3://"):
            location = Path(location).resolve().as_uri()
    return mlflow_client.create_experiment(name, artifact_location=location)


@dataclass(frozen=True)
class LoggedModel:
    """Where a training run and its model ended up."""

    run_id: str
    model_uri: str


class _ModuleRecorder(pickle.Pickler):
    """Pickles to nowhere, noting the module of every object and class it meets."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL)
        self.modules: set[str] = set()

    def reducer_override(self, obj: Any) -> Any:
        for owner in (obj, type(obj)):
            module = getattr(owner, "__module__", None)
            if isinstance(module, str):
                self.modules.add(module.partition(".")[0])
        return NotImplemented


def model_requirements(model: DetectorModel) -> list[str] | None:
    """The pinned distributions loading `model` needs: those of the modules its pickle refers
    to, plus MLflow and cloudpickle. MLflow would otherwise infer them by loading the model in
    a new Python process (seconds of every training run). None (MLflow infers) if the model
    does not pickle plainly."""
    recorder = _ModuleRecorder()
    try:
        recorder.dump(model)
    except Exception:  # noqa: BLE001 - MLflow's own inference copes with the rest
        return None
    by_module = metadata.packages_distributions()
    names = {"mlflow", "cloudpickle"}
    names |= {d for m in recorder.modules for d in by_module.get(m, ())}
    pins = []
    for name in sorted(names, key=str.lower):
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def log_training(
    *,
    tracking_uri: str,
    experiment_id: str,
    run_name: str,
    model: DetectorModel,
    features: pd.DataFrame,
    params: dict[str, Any],
    metrics: dict[str, float],
    figures: dict[str, Any],
    tags: dict[str, str],
    parent_run_id: str | None = None,
) -> LoggedModel:
    """One MLflow run holding everything needed to trust and trace the model.

    MLflow's model logging goes through its fluent API: the caller (the train flow) has set
    the process-wide tracking URI to `tracking_uri`.
    """
    import matplotlib.pyplot as plt

    example = features.head(INPUT_EXAMPLE_ROWS)
    signature = infer_signature(example, model.predict(None, example))
    # MLflow refuses to resume a run of another experiment than the process's active one.
    mlflow.set_experiment(experiment_id=experiment_id)
    resume = {"run_id": parent_run_id} if parent_run_id else {}
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name, tags=tags, **resume
    ) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics(metrics)
        for name, fig in figures.items():
            mlflow.log_figure(fig, f"plots/{name}")
            plt.close(fig)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            signature=signature,
            input_example=example,
            pip_requirements=model_requirements(model),
        )
    return LoggedModel(run_id=run.info.run_id, model_uri=info.model_uri)


def start_run(tracking_uri: str, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
    """Open a run that child runs (tuning trials) can hang under; log_training resumes it."""
    run = MlflowClient(tracking_uri).create_run(
        experiment_id, run_name=run_name, tags={**tags, OWNER_TAG: owner()}
    )
    return run.info.run_id


def end_run(tracking_uri: str, run_id: str, status: str) -> None:
    """Close a run opened by start_run that will not be resumed (e.g. training failed); a run
    that already ended (logging the model ends it) keeps its status."""
    mlflow_client = MlflowClient(tracking_uri)
    if mlflow_client.get_run(run_id).info.status == "RUNNING":
        mlflow_client.set_terminated(run_id, status=status)


def end_dead_runs(tracking_uri: str, experiment_id: str) -> list[str]:
    """Mark KILLED the runs left RUNNING by a process of this host that no longer exists;
    the ids of the runs ended. Runs without an owner tag or from other hosts are left alone."""
    mlflow_client = MlflowClient(tracking_uri)
    ended = []
    for run in mlflow_client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    ):
        value = run.data.tags.get(OWNER_TAG)
        if value and owner_alive(value) is False:
            mlflow_client.set_tag(run.info.run_id, "pynomaly.ended_by", f"repair by {owner()}")
            mlflow_client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    return ended


def trial_logger(tracking_uri: str, experiment_id: str, parent_run_id: str) -> Any:
    """A callback logging each tuning trial (a dict) as an MLflow child run."""
    mlflow_client = MlflowClient(tracking_uri)

    def log_trial(trial: dict[str, Any]) -> None:
        now = int(time.time() * 1000)
        run = mlflow_client.create_run(
            experiment_id,
            run_name=f"trial-{trial.get('number', '?')}",
            tags={
                "mlflow.parentRunId": parent_run_id,
                "pynomaly.kind": "tuning-trial",
                OWNER_TAG: owner(),
            },
        )
        numbers = {k: v for k, v in trial.items() if isinstance(v, int | float) and k != "number"}
        # one request for all of the trial's metrics and parameters
        mlflow_client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in numbers.items()],
            params=[Param(k, str(v)[:500]) for k, v in trial.items() if k not in numbers],
        )
        mlflow_client.set_terminated(run.info.run_id)

    return log_trial
