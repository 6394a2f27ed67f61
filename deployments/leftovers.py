"""What a killed command leaves behind, found and removed by the next command.

On embedded defaults Prefect starts its API as a child process (uvicorn running
`prefect.server.api.server:create_app`) and stops it at exit; a `kill -9` of the command skips
that, and the server runs on. Each command names itself in its environment
(`PYNOMALY_COMMAND_PID`, inherited by that server), so the next command of the same Prefect
home can tell an orphan (its command is gone) from a server a live command uses. `services up`
servers and user-started `prefect server start` are never ephemeral and never carry the name.
Processes are read with psutil.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import psutil

COMMAND_PID_ENV = "PYNOMALY_COMMAND_PID"
SERVER_APP = "prefect.server.api.server:create_app"


def mark_command() -> None:
    """Name this process (pid and start time) in the environment its children inherit."""
    os.environ[COMMAND_PID_ENV] = f"{os.getpid()}:{psutil.Process().create_time()}"


def _command_alive(value: str) -> bool:
    """Whether the command a server names still runs (a zombie or a reused pid is gone)."""
    pid, _, started = value.partition(":")
    if not pid.isdigit():
        return True  # not ours to judge
    try:
        command = psutil.Process(int(pid))
        if command.status() == psutil.STATUS_ZOMBIE:
            return False
        return not started or str(command.create_time()) == started
    except psutil.Error:
        return False


def orphan_servers(prefect_home: Path) -> list[psutil.Process]:
    """Ephemeral Prefect API servers of `prefect_home` whose pynomaly command is gone."""
    ours = os.path.realpath(prefect_home.expanduser())
    found = []
    for proc in psutil.process_iter(["cmdline", "environ", "cwd", "status"]):
        info = proc.info
        if not any(SERVER_APP in arg for arg in info["cmdline"] or ()):
            continue
        env, cwd = info["environ"] or {}, info["cwd"]  # None: another user's process
        owner, home = env.get(COMMAND_PID_ENV), env.get("PREFECT_HOME")
        if env.get("PREFECT__SERVER_EPHEMERAL") != "1" or not owner or not home or not cwd:
            continue
        if os.path.realpath(os.path.join(cwd, os.path.expanduser(home))) != ours:
            continue
        if info["status"] != psutil.STATUS_ZOMBIE and not _command_alive(owner):
            found.append(proc)
    return found


def stop_orphan_servers(prefect_home: Path, timeout: float = 5.0) -> list[int]:
    """Stop the orphaned ephemeral servers of `prefect_home` (SIGTERM, SIGKILL after
    `timeout`); their pids."""
    servers = orphan_servers(prefect_home)
    for server in servers:
        with contextlib.suppress(psutil.NoSuchProcess):
            server.terminate()
    _, left = psutil.wait_procs(servers, timeout=timeout)
    for server in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            server.kill()
    psutil.wait_procs(left, timeout=timeout)
    return [server.pid for server in servers]
