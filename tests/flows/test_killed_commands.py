"""Kills leave no server and no staging copy behind.

Real `pynomaly` commands on embedded defaults (a private PYNOMALY_HOME, Prefect's ephemeral API
server started by the command itself) are signalled while they run. SIGTERM ends a command the
way Ctrl-C does: its Prefect server stopped, one stderr line, exit code 143. After kill -9 the
server runs on as an orphan, and the next command stops it. A killed `backup create` leaves its
staging copy; the next backup removes it, and keeps the staging folder of a live (stopped) one.
Output goes to files, not pipes: an orphaned server keeps its command's pipes open.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

PYNOMALY = str(Path(sys.executable).with_name("pynomaly"))
SERVER_APP = b"prefect.server.api.server:create_app"


def command_env(home: Path, tmp: Path | None = None) -> dict[str, str]:
    """This environment on embedded defaults: no Prefect settings of the test session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PYNOMALY_"))}
    env["PYNOMALY_HOME"] = str(home)
    env["PYNOMALY_PREFECT_MODE"] = "ephemeral"  # the per-command server these kills are about
    if tmp is not None:
        tmp.mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmp)  # so a staging copy in the temp folder is found here too
    return env


def start(home: Path, logs: Path, *args: str, tmp: Path | None = None) -> subprocess.Popen:
    logs.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [PYNOMALY, *args],
        env=command_env(home, tmp),
        stdout=(logs / "stdout").open("w"),
        stderr=(logs / "stderr").open("w"),
    )


def prefect_servers(home: Path) -> dict[int, int]:
    """pid -> parent pid of every running Prefect API server whose PREFECT_HOME is `home`'s."""
    want = f"PREFECT_HOME={home / 'prefect'}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if SERVER_APP not in (entry / "cmdline").read_bytes():
                continue
            if want not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] not in {"Z", "X"}:
            found[int(entry.name)] = int(fields[1])
    return found


def wait_for_server(home: Path, proc: subprocess.Popen, timeout: float = 180) -> int:
    """The pid of the command's Prefect server, once it answers /api/health."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the command ended ({proc.returncode}) before its server"
        for pid, parent in prefect_servers(home).items():
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            port = int(args[args.index(b"--port") + 1])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                    assert parent == proc.pid
                    return pid
            except OSError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"no Prefect server of {home} answered within {timeout} s")


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A private home; whatever server of it is left at the end is killed."""
    home = tmp_path / "home"
    yield home
    for pid in prefect_servers(home):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def long_train(tmp_path: Path) -> list[str]:
    """Arguments of a train that runs until it is killed (labelled AutoML, 300 s budget)."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(400, 4)), columns=list("abcd"))
    frame["y"] = (rng.random(400) < 0.08).astype(int)
    frame.loc[frame["y"] == 1, list("abcd")] += 3.0
    frame.to_csv(tmp_path / "train.csv", index=False)
    return [
        "train",
        str(tmp_path / "train.csv"),
        "--model",
        "m",
        "--label-column",
        "y",
        "--detector",
        "auto",
        "--time-budget",
        "300",
    ]


def test_sigterm_ends_a_command_like_ctrl_c_and_stops_its_prefect_server(
    home: Path, tmp_path: Path, long_train: list[str]
) -> None:
    proc = start(home, tmp_path / "logs", *long_train)
    try:
        wait_for_server(home, proc)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
    stderr = (tmp_path / "logs" / "stderr").read_text()
    assert code == 143, stderr
    assert stderr.splitlines() == ["pynomaly: interrupted (SIGTERM)"]
    assert prefect_servers(home) == {}


def test_the_next_command_stops_the_prefect_server_a_kill_9_left(
    home: Path, tmp_path: Path, long_train: list[str]
) -> None:
    proc = start(home, tmp_path / "logs", *long_train)
    try:
        server = wait_for_server(home, proc)
    finally:
        proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    time.sleep(1)
    orphans = prefect_servers(home)
    assert list(orphans) == [server]  # still running, now some other process's child
    assert orphans[server] != proc.pid

    nxt = subprocess.run(
        [PYNOMALY, "registry", "list", "--json"],
        env=command_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert nxt.returncode == 0, nxt.stderr
    assert prefect_servers(home) == {}


def staging_folders(home: Path, tmp: Path) -> set[Path]:
    """Backup staging folders in the home's staging folder or the commands' temp folder."""
    roots = [home / "staging", tmp]
    return {f for root in roots if root.exists() for f in root.glob("pynomaly-backup-*")}


def start_backup_until_staged(home: Path, tmp: Path, logs: Path) -> tuple[subprocess.Popen, Path]:
    """A `backup create` and its staging folder, caught while it copies the artifacts."""
    before = staging_folders(home, tmp)
    proc = start(home, logs, "backup", "create", "--json", tmp=tmp)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        new = staging_folders(home, tmp) - before
        if new:
            return proc, new.pop()
        time.sleep(0.005)
    proc.kill()
    raise AssertionError(f"no staging folder seen (exit {proc.returncode})")


def test_the_next_backup_removes_the_staging_copy_of_a_killed_one(
    home: Path, tmp_path: Path
) -> None:
    # Artifacts that take a second or two to copy: the staging folder is there to be caught.
    (home / "artifacts").mkdir(parents=True)
    (home / "artifacts" / "big.bin").write_bytes(os.urandom(40_000_000))
    tmp = tmp_path / "tmp"

    killed, dead_copy = start_backup_until_staged(home, tmp, tmp_path / "killed")
    killed.kill()
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert dead_copy.is_dir()

    # A live backup, stopped while it stages: its folder must survive the next backup.
    live, live_copy = start_backup_until_staged(home, tmp, tmp_path / "live")
    os.kill(live.pid, signal.SIGSTOP)
    try:
        nxt = subprocess.run(
            [PYNOMALY, "backup", "create", "--json"],
            env=command_env(home, tmp),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert nxt.returncode == 0, nxt.stderr
        assert json.loads(nxt.stdout)["id"]
        assert not dead_copy.exists()
        assert live_copy.is_dir()
        assert staging_folders(home, tmp) == {live_copy}
    finally:
        os.kill(live.pid, signal.SIGCONT)
    assert live.wait(timeout=300) == 0, (tmp_path / "live" / "stderr").read_text()
    assert staging_folders(home, tmp) == set()
