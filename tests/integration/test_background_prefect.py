"""The default embedded Prefect API: one background server per home, shared by commands.

Real `pynomaly` commands on embedded defaults (nothing configured but PYNOMALY_HOME): the first
starts the server, two started at once share it, a kill -9 of a command leaves it reusable, it
stops itself when idle and with `pynomaly services down`, and every flow run is on record in
its database. Output goes to files, not pipes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from deployments.local import background

PYNOMALY = str(Path(sys.executable).with_name("pynomaly"))


def command_env(home: Path, idle_minutes: float) -> dict[str, str]:
    """This environment on embedded defaults (background mode): no session Prefect settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PYNOMALY_"))}
    env |= {"PYNOMALY_HOME": str(home), "PYNOMALY_PREFECT_IDLE_MINUTES": str(idle_minutes)}
    return env


def start(env: dict[str, str], logs: Path, *args: str) -> subprocess.Popen:
    logs.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [PYNOMALY, *args, "--json"],
        env=env,
        stdout=(logs / "stdout").open("w"),
        stderr=(logs / "stderr").open("w"),
    )


def finished(proc: subprocess.Popen, logs: Path) -> dict:
    assert proc.wait(timeout=600) == 0, (logs / "stderr").read_text()
    return json.loads((logs / "stdout").read_text())


def flow_runs(url: str) -> list[str]:
    """The `dataset` parameter of every flow run the server holds."""
    request = urllib.request.Request(
        f"{url}/flow_runs/filter",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        runs = json.load(response)
    return sorted(run["parameters"].get("dataset", "?") for run in runs)


def stored_flow_runs(prefect_home: Path) -> list[str]:
    """The `dataset` parameter of every flow run in the home's Prefect database (read from the
    SQLite file: no server needs to run)."""
    with contextlib.closing(sqlite3.connect(prefect_home / "prefect.db")) as conn:
        rows = conn.execute("SELECT parameters FROM flow_run").fetchall()
    return sorted(json.loads(parameters).get("dataset", "?") for (parameters,) in rows)


def servers_of(prefect_home: Path) -> list[psutil.Process]:
    """Background server processes whose PREFECT_HOME is `prefect_home`."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        cmdline, env = proc.info["cmdline"] or [], proc.info["environ"] or {}
        if "deployments.local.background" in cmdline and env.get("PREFECT_HOME") == str(
            prefect_home
        ):
            found.append(proc)
    return found


def wait_gone(proc: psutil.Process, seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
    except psutil.TimeoutExpired:
        return False
    return True


@pytest.fixture
def home(tmp_path: Path):
    home = tmp_path / "home"
    yield home
    for proc in servers_of((home / "prefect").resolve()):  # a failed test leaves none running
        proc.kill()


def test_commands_share_one_background_server(home: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c", "d"):
        frame = pd.DataFrame(rng.normal(size=(200, 3)), columns=["x", "y", "z"])
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    prefect_home = (home / "prefect").resolve()
    env = command_env(home, idle_minutes=30)

    # Two commands starting at once: one server, both runs on record.
    first = [
        start(env, tmp_path / n, "ingest", str(tmp_path / f"{n}.csv"), "--dataset", n)
        for n in ("a", "b")
    ]
    for proc, name in zip(first, ("a", "b"), strict=True):
        assert finished(proc, tmp_path / name)["rows"] == 200
    state = background.read_state(prefect_home)
    assert state is not None
    assert [p.pid for p in servers_of(prefect_home)] == [state["pid"]]
    assert flow_runs(state["url"]) == ["a", "b"]
    assert list((prefect_home / "background" / "commands").iterdir()) == []

    # kill -9 of a command while it is attached: the server runs on and serves the next one.
    killed = start(env, tmp_path / "killed", "ingest", str(tmp_path / "c.csv"), "--dataset", "c")
    commands = prefect_home / "background" / "commands"
    deadline = time.monotonic() + 300
    while not any(commands.iterdir()) and killed.poll() is None:
        assert time.monotonic() < deadline, "the command never attached"
        time.sleep(0.1)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert (
        finished(
            start(env, tmp_path / "d", "ingest", str(tmp_path / "d.csv"), "--dataset", "d"),
            tmp_path / "d",
        )["rows"]
        == 200
    )
    assert background.read_state(prefect_home) == state
    assert [p.pid for p in servers_of(prefect_home)] == [state["pid"]]
    # The killed command's pid file is removed: by the next command attaching, or by the
    # server's idle watch (every 5 s) when the killed command (a warm process's child, stopped
    # by SIGTERM when its client died) was still ending then.
    deadline = time.monotonic() + 30
    while any(commands.iterdir()):
        assert time.monotonic() < deadline, list(commands.iterdir())
        time.sleep(0.2)

    status = subprocess.run(
        [PYNOMALY, "services", "status", "--json"], env=env, capture_output=True, text=True
    )
    embedded = json.loads(status.stdout)["services"]["prefect-embedded"]
    assert (embedded["pid"], embedded["url"], embedded["healthy"]) == (
        state["pid"],
        state["url"],
        True,
    )

    # `services down` stops it; nothing of that home keeps running.
    down = subprocess.run(
        [PYNOMALY, "services", "down", "--json"], env=env, capture_output=True, text=True
    )
    assert down.returncode == 0, down.stderr
    assert "prefect-embedded" in json.loads(down.stdout)["stopped"]
    assert not servers_of(prefect_home)
    assert background.read_state(prefect_home) is None

    # A short idle time: a command still runs to the end on it (longer than the idle time),
    # then the server stops itself; the next command starts a new one on the same database.
    # The new server is read while the command runs: after it, the server may be gone already.
    short = command_env(home, idle_minutes=0.05)
    proc = start(short, tmp_path / "a2", "ingest", str(tmp_path / "a.csv"), "--dataset", "a2")
    idle_state = None
    while proc.poll() is None:
        idle_state = idle_state or background.read_state(prefect_home)
        time.sleep(0.1)
    assert finished(proc, tmp_path / "a2")["rows"] == 200
    assert idle_state is not None and idle_state["pid"] != state["pid"]
    with contextlib.suppress(psutil.NoSuchProcess):  # gone already: stopped
        assert wait_gone(psutil.Process(idle_state["pid"]), 120)
    assert background.read_state(prefect_home) is None
    # The same database: the earlier runs (the killed one's too, if it got that far) are there.
    assert set(stored_flow_runs(prefect_home)) - {"c"} == {"a", "b", "d", "a2"}
    assert not servers_of(prefect_home)
