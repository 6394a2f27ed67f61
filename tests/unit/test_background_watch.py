"""The background Prefect API's watcher: when it stops its server and when it does not."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import psutil

from deployments.local import background


def state_of(prefect_home: Path, pid: int) -> None:
    (prefect_home / "background" / "commands").mkdir(parents=True)
    state = {"url": "http://127.0.0.1:9/api", "pid": pid, "started": 0.0}
    (prefect_home / "background" / "server.json").write_text(json.dumps(state))


def watch(prefect_home: Path, idle_seconds: float) -> SimpleNamespace:
    server = SimpleNamespace(should_exit=False)
    background._watch_idle(server, prefect_home, idle_seconds, poll=0.05)
    return server


def test_a_replaced_server_stops_and_leaves_its_successors_state(tmp_path: Path) -> None:
    state_of(tmp_path, os.getpid() + 1)  # another server is now the home's
    assert watch(tmp_path, idle_seconds=3600).should_exit
    assert json.loads((tmp_path / "background" / "server.json").read_text())["pid"] != os.getpid()


def test_a_server_whose_home_was_removed_stops(tmp_path: Path) -> None:
    state_of(tmp_path, os.getpid())
    shutil.rmtree(tmp_path / "background")
    assert watch(tmp_path, idle_seconds=3600).should_exit
    assert not (tmp_path / "background").exists()  # not made again by the watcher


def test_idle_stop_removes_the_state_but_not_under_a_live_command(tmp_path: Path) -> None:
    state_of(tmp_path, os.getpid())
    me = psutil.Process()
    live = tmp_path / "background" / "commands" / f"{me.pid}-{me.create_time()}"
    live.touch()
    server = SimpleNamespace(should_exit=False)
    watcher = threading.Thread(
        target=background._watch_idle, args=(server, tmp_path, 0.2), kwargs={"poll": 0.05}
    )
    watcher.start()
    watcher.join(timeout=1.0)  # five idle times with a live command: still serving
    assert watcher.is_alive() and not server.should_exit
    live.unlink()  # the command ends
    watcher.join(timeout=60)
    assert server.should_exit
    assert not (tmp_path / "background" / "server.json").exists()


def test_a_killed_commands_pid_file_is_not_live(tmp_path: Path) -> None:
    state_of(tmp_path, os.getpid())
    dead = psutil.Popen(["true"])
    dead.wait()
    gone = tmp_path / "background" / "commands" / f"{dead.pid}-{dead.create_time()}"
    gone.touch()
    assert background._live_commands(tmp_path) == 0
    assert not gone.exists()


def test_a_command_attaching_removes_a_killed_commands_pid_file(
    tmp_path: Path, monkeypatch
) -> None:
    me = psutil.Process()
    state_of(tmp_path, me.pid)
    state = {"url": "http://127.0.0.1:9/api", "pid": me.pid, "started": me.create_time()}
    (tmp_path / "background" / "server.json").write_text(json.dumps(state))
    monkeypatch.setattr(background, "healthy", lambda url, timeout=2.0: True)
    for var in ("PREFECT_API_URL", background.EMBEDDED_URL_ENV):
        monkeypatch.setenv(var, "unset")  # attach sets them: restored after the test
    dead = psutil.Popen(["true"])
    dead.wait()
    commands = tmp_path / "background" / "commands"
    gone = commands / f"{dead.pid}-{dead.create_time()}"
    gone.touch()
    assert background.attach(tmp_path, idle_minutes=30) == state["url"]
    assert [p.name for p in commands.iterdir()] == [f"{me.pid}-{me.create_time()}"]
    background._detach(commands / f"{me.pid}-{me.create_time()}")
