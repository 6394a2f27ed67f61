"""The embedded Prefect API kept running in the background and shared by commands.

Prefect's ephemeral mode starts its API server (a uvicorn child, seconds of imports and
start-up) for every command and stops it at exit. On embedded defaults the first command
instead starts this server, detached, under the Prefect home; later commands find it (state
file, pid and health check) and only set PREFECT_API_URL. It runs Prefect's own app in its
ephemeral configuration (same database, same services, no UI), so the platform behaves as with
the ephemeral API: `Settings.prefect_server` stays False for it (PYNOMALY_PREFECT_EMBEDDED_URL
names it), and backups still copy the embedded Prefect DB.

Each attached command leaves a pid file in `<prefect home>/background/commands/`; the server
stops itself once no live command has been seen for the idle time, and `pynomaly services down`
stops it. One file lock serialises start, attach and the idle stop, so two commands starting at
once share one server and a command never attaches to a server that is about to stop.
`python -m deployments.local.background --port N --idle-minutes M` is the server process.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from pynomaly.settings import EMBEDDED_PREFECT_URL_ENV

EMBEDDED_URL_ENV = EMBEDDED_PREFECT_URL_ENV
HOST = "127.0.0.1"
# Variables a command sets for itself that the shared server must not inherit.
COMMAND_ONLY = ("PYNOMALY_COMMAND_PID", "PREFECT_API_URL", "PREFECT_API_KEY", EMBEDDED_URL_ENV)


def folder(prefect_home: Path) -> Path:
    return prefect_home / "background"


def _lock(prefect_home: Path, timeout: float):
    from filelock import FileLock

    (path := folder(prefect_home)).mkdir(mode=0o700, parents=True, exist_ok=True)
    return FileLock(str(path / "server.lock"), timeout=timeout)


def _state_file(prefect_home: Path) -> Path:
    return folder(prefect_home) / "server.json"


def _commands(prefect_home: Path) -> Path:
    return folder(prefect_home) / "commands"


def healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether a Prefect API answers /health at `url` (the .../api address)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _process(pid: int, started: float):
    """The process `pid` if it is the one started at `started` and not a zombie, else None."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or abs(proc.create_time() - started) > 0.01:
            return None
        return proc
    except psutil.Error:
        return None


def read_state(prefect_home: Path) -> dict | None:
    """The running server of this Prefect home (url, pid, started), or None."""
    try:
        state = json.loads(_state_file(prefect_home).read_text())
    except (OSError, ValueError):
        return None
    return state if _process(state["pid"], state["started"]) else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _live_commands(prefect_home: Path) -> int:
    """Commands attached now; pid files of commands that are gone (kill -9) are removed."""
    count = 0
    for entry in _commands(prefect_home).glob("*"):
        pid, _, started = entry.name.partition("-")
        if pid.isdigit() and _process(int(pid), float(started or 0)):
            count += 1
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
    return count


def _start(prefect_home: Path, idle_minutes: float, timeout: float) -> dict:
    """Start the server detached (its own session: Ctrl-C of a command does not reach it)."""
    import psutil

    env = {k: v for k, v in os.environ.items() if k not in COMMAND_ONLY}
    env |= {"PREFECT_HOME": str(prefect_home), "PREFECT_UI_ENABLED": "0"}
    env |= {"PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    # The server imports this module by name: the folder holding `deployments/`.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    port = _free_port()
    log = folder(prefect_home) / "server.log"
    command = [sys.executable, "-m", "deployments.local.background", "--port", str(port)]
    command += ["--idle-minutes", str(idle_minutes)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command,
            cwd=prefect_home,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://{HOST}:{port}/api"
    deadline = time.monotonic() + timeout
    while not healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(OSError):
                proc.kill()
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"the background Prefect server did not start ({log}): {tail[0]}")
        time.sleep(0.2)
    state = {"url": url, "pid": proc.pid, "started": psutil.Process(proc.pid).create_time()}
    _state_file(prefect_home).write_text(json.dumps(state))
    return state


def attach(prefect_home: Path, idle_minutes: float, timeout: float = 90.0) -> str:
    """The URL of this Prefect home's background server (started if none runs); this command
    counts as live for it until it exits. Sets PREFECT_API_URL: call before importing prefect."""
    import psutil

    prefect_home = prefect_home.expanduser().resolve()
    with _lock(prefect_home, timeout + 30):
        state = read_state(prefect_home)
        if state is None or not healthy(state["url"]):
            if state is not None:
                _terminate(state)  # alive but not answering: replace it
            state = _start(prefect_home, idle_minutes, timeout)
        _commands(prefect_home).mkdir(mode=0o700, exist_ok=True)
        _live_commands(prefect_home)  # and so remove what commands that are gone left
        me = _commands(prefect_home) / f"{os.getpid()}-{psutil.Process().create_time()}"
        me.touch()
    atexit.register(_detach, me)
    os.environ["PREFECT_API_URL"] = os.environ[EMBEDDED_URL_ENV] = state["url"]
    return state["url"]


def _detach(me: Path) -> None:
    with contextlib.suppress(OSError):
        me.unlink()


def _terminate(state: dict, timeout: float = 10.0) -> None:
    import psutil

    proc = _process(state["pid"], state["started"])
    if proc is None:
        return
    with contextlib.suppress(psutil.Error):
        proc.terminate()
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def stop(prefect_home: Path) -> int | None:
    """Stop this Prefect home's background server (`pynomaly services down`); its pid."""
    prefect_home = prefect_home.expanduser().resolve()
    if not _state_file(prefect_home).exists():
        return None
    with _lock(prefect_home, 120):
        state = read_state(prefect_home)
        if state is not None:
            _terminate(state)
        with contextlib.suppress(OSError):
            _state_file(prefect_home).unlink()
    return state["pid"] if state else None


def _superseded(prefect_home: Path) -> bool:
    """Whether this server is no longer the one of its home: the home was removed, or the
    state file is gone or names another server (commands can no longer find this one)."""
    try:
        return json.loads(_state_file(prefect_home).read_text())["pid"] != os.getpid()
    except (OSError, ValueError, KeyError):
        return True


def _watch_idle(server, prefect_home: Path, idle_seconds: float, poll: float = 5.0) -> None:
    """Stop `server` once no command has been live for `idle_seconds` (a command that came
    and went between two looks still counts: its pid file's removal touched the folder), or
    at once when it is superseded."""
    poll = min(poll, max(idle_seconds / 4, 0.2))
    commands, last_busy = _commands(prefect_home), time.time()
    while not server.should_exit:
        time.sleep(poll)
        if not folder(prefect_home).is_dir():  # the home was removed: nothing to serve
            server.should_exit = True
            break
        with _lock(prefect_home, 600):
            # The state file exists by now: the starting command wrote it under this lock.
            if _superseded(prefect_home):
                server.should_exit = True
                break
            if _live_commands(prefect_home):
                last_busy = time.time()
            with contextlib.suppress(OSError):
                last_busy = max(last_busy, commands.stat().st_mtime)
            if time.time() - last_busy >= idle_seconds:
                # Under the lock: a command attaching now finds no server and starts one.
                with contextlib.suppress(OSError):
                    _state_file(prefect_home).unlink()
                server.should_exit = True


def main(argv: list[str] | None = None) -> None:
    """Serve Prefect's API app (ephemeral configuration) until idle or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m deployments.local.background")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle-minutes", type=float, required=True)
    args = parser.parse_args(argv)
    import uvicorn

    config = uvicorn.Config(
        "prefect.server.api.server:create_app",
        factory=True,
        host=HOST,
        port=args.port,
        log_level="error",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    prefect_home = Path(os.environ["PREFECT_HOME"])
    _commands(prefect_home).mkdir(mode=0o700, parents=True, exist_ok=True)
    watcher = threading.Thread(
        target=_watch_idle, args=(server, prefect_home, args.idle_minutes * 60), daemon=True
    )
    watcher.start()
    server.run()


if __name__ == "__main__":
    main()
