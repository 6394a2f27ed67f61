"""The warm command process: real `pynomaly` commands on embedded defaults hand over to it.

The first command starts the background Prefect API and, once it finishes, the warm process;
later commands are forks of it (its log names each command it forked). Output, exit codes,
one-line errors and stdin are those of an in-process command; SIGTERM and kill -9 of the client
end the command with its cleanup; a changed PYNOMALY_ variable runs in-process; `services down`
leaves no process. Output goes to files, not pipes. No timed assertions.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from deployments.local import warm

PYNOMALY = str(Path(sys.executable).with_name("pynomaly"))


def command_env(home: Path) -> dict[str, str]:
    """This environment on embedded defaults (background mode, warm on)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PYNOMALY_"))}
    return env | {"PYNOMALY_HOME": str(home)}


def pynomaly(env: dict[str, str], logs: Path, *args: str, stdin=None) -> subprocess.Popen:
    logs.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [PYNOMALY, *args],
        env=env,
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=(logs / "stdout").open("w"),
        stderr=(logs / "stderr").open("w"),
    )


def completed(proc: subprocess.Popen, logs: Path) -> tuple[int, str, str]:
    code = proc.wait(timeout=600)
    return code, (logs / "stdout").read_text(), (logs / "stderr").read_text()


def score_b1(env: dict[str, str], logs: Path) -> tuple[int, str, str]:
    """`pynomaly score` of the test's batch (s.csv beside `logs`) as batch b1, with --json."""
    batch = logs.parent / "s.csv"
    args = ("score", str(batch), "--model", "m", "--batch-id", "b1", "--json")
    return completed(pynomaly(env, logs, *args), logs)


def forked(prefect_home: Path) -> list[tuple[int, str]]:
    """(child pid, argv) of each command the warm server ran, from its log."""
    log = warm.folder(prefect_home) / "warm.log"
    text = log.read_text() if log.exists() else ""
    return [(int(p), a) for p, a in re.findall(r"command (\d+): (.*)", text)]


def processes_of(home: Path) -> list[psutil.Process]:
    """Background API, warm server and its children started for `home`."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ", "status"]):
        cmdline, env = " ".join(proc.info["cmdline"] or []), proc.info["environ"] or {}
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if ("deployments.local" in cmdline) and env.get("PYNOMALY_HOME") == str(home):
            found.append(proc)
    return found


def gone(pid: int, seconds: float = 120) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def wait_for(condition, what: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.fixture
def home(tmp_path: Path):
    home = tmp_path / "home"
    yield home
    for proc in processes_of(home):  # a failed test leaves nothing running
        proc.kill()


def test_commands_run_in_the_warm_process(home: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    columns = ["x", "y", "z"]
    pd.DataFrame(rng.normal(size=(500, 3)), columns=columns).to_csv(tmp_path / "t.csv", index=False)
    pd.DataFrame(rng.normal(size=(300, 3)), columns=columns).to_csv(tmp_path / "s.csv", index=False)
    env = command_env(home)
    prefect_home = (home / "prefect").resolve()
    commands = prefect_home / "background" / "commands"

    # In-process: the first command starts the background API, then the warm server.
    code, out, err = completed(
        pynomaly(
            env, tmp_path / "train", "train", str(tmp_path / "t.csv"), "--model", "m", "--json"
        ),
        tmp_path / "train",
    )
    assert code == 0, err
    wait_for(lambda: warm.read_state(prefect_home) is not None, "no warm server started")
    assert forked(prefect_home) == []
    code, expected, err = score_b1(env | {"PYNOMALY_WARM": "false"}, tmp_path / "score0")
    assert code == 0, err
    assert forked(prefect_home) == []

    # Handed over: the same JSON (the same batch again: idempotent), the command in the log.
    code, out, err = score_b1(env, tmp_path / "score1")
    assert code == 0, err
    assert json.loads(out) == json.loads(expected)
    assert [argv for _, argv in forked(prefect_home)] == [
        f"score {tmp_path / 's.csv'} --model m --batch-id b1 --json"
    ]

    # Bad input: exit 2, one line on stderr, nothing on stdout.
    code, out, err = completed(
        pynomaly(
            env, tmp_path / "bad", "score", str(tmp_path / "nope.csv"), "--model", "m", "--json"
        ),
        tmp_path / "bad",
    )
    assert (code, out) == (2, "")
    assert err.strip().splitlines() == [f"error: {tmp_path / 'nope.csv'}: file not found"]
    code, out, err = completed(
        pynomaly(env, tmp_path / "usage", "score", "--bogus"), tmp_path / "usage"
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--bogus" in err, err
    # stdin is the client's: a pipe, not a terminal, so restore asks for --yes.
    code, out, err = completed(
        pynomaly(env, tmp_path / "stdin", "backup", "restore", "x", stdin=subprocess.PIPE),
        tmp_path / "stdin",
    )
    assert (code, err.strip()) == (2, "error: restore overwrites the platform state: pass --yes")
    assert len(forked(prefect_home)) == 4

    # SIGTERM to the client: the command is interrupted as in-process (143, one line).
    long_train = (
        "train",
        str(tmp_path / "t.csv"),
        "--model",
        "long",
        "--detector",
        "auto",
        "--time-budget",
        "300",
        "--json",
    )
    client = pynomaly(env, tmp_path / "term", *long_train)
    wait_for(lambda: len(forked(prefect_home)) == 5 and any(commands.iterdir()), "not attached")
    child = forked(prefect_home)[-1][0]
    # In its own process group, which the client signals: what it started is reached too.
    assert os.getpgid(child) == child != os.getpgid(client.pid)
    client.send_signal(signal.SIGTERM)
    code, out, err = completed(client, tmp_path / "term")
    assert (code, err.strip()) == (143, "pynomaly: interrupted (SIGTERM)")
    assert gone(child, 5)  # the client waited for the child to exit
    assert list(commands.iterdir()) == []

    # kill -9 of the client: the child notices and stops with its cleanup.
    client = pynomaly(env, tmp_path / "kill", *long_train)
    wait_for(lambda: len(forked(prefect_home)) == 6 and any(commands.iterdir()), "not attached")
    child = forked(prefect_home)[-1][0]
    client.send_signal(signal.SIGKILL)
    client.wait(timeout=60)
    assert gone(child)
    wait_for(lambda: not any(commands.iterdir()), "the killed command's pid file stayed", 30)

    # A changed PYNOMALY_ variable: in-process (the warm server would hold the old value).
    code, out, err = score_b1(env | {"PYNOMALY_CHUNK_ROWS": "100"}, tmp_path / "changed")
    assert code == 0, err
    assert json.loads(out) == json.loads(expected)
    assert len(forked(prefect_home)) == 6

    # `services down`: nothing of this home keeps running.
    code, out, err = completed(
        pynomaly(env, tmp_path / "down", "services", "down", "--json"), tmp_path / "down"
    )
    assert code == 0, err
    assert "prefect-embedded" in json.loads(out)["stopped"]
    _, left = psutil.wait_procs(processes_of(home), timeout=30)
    assert left == []
    assert warm.read_state(prefect_home) is None
