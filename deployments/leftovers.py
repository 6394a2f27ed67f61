"""What a killed command leaves behind, found and removed by the next command.

On embedded defaults Prefect starts its API as a child process (uvicorn running
`prefect.server.api.server:create_app`) and stops it at exit; a `kill -9` of the command skips
that, and the server runs on. Each command names itself in its environment
(`PYNOMALY_COMMAND_PID`, inherited by that server), so the next command of the same Prefect
home can tell an orphan (its command is gone) from a server a live command uses. `services up`
servers and user-started `prefect server start` are never ephemeral and never carry the name.
Linux only (/proc); elsewhere nothing is looked for.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

COMMAND_PID_ENV = "PYNOMALY_COMMAND_PID"
SERVER_APP = b"prefect.server.api.server:create_app"


def _stat(pid: int | str) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[0], fields[19]


def _running(pid: int) -> bool:
    found = _stat(pid)
    return found is not None and found[0] not in {"Z", "X"}


def mark_command() -> None:
    """Name this process (pid and start time) in the environment its children inherit."""
    found = _stat(os.getpid())
    os.environ[COMMAND_PID_ENV] = f"{os.getpid()}:{found[1] if found else ''}"


def _command_alive(value: str) -> bool:
    """Whether the command a server names still runs (a zombie or a reused pid is gone)."""
    pid, _, started = value.partition(":")
    if not pid.isdigit():
        return True  # not ours to judge
    found = _stat(pid)
    return found is not None and found[0] not in {"Z", "X"} and (not started or found[1] == started)


def _environment(pid: str) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def orphan_servers(prefect_home: Path) -> list[int]:
    """Pids of ephemeral Prefect API servers of `prefect_home` whose pynomaly command is gone."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return []
    ours = os.path.realpath(prefect_home.expanduser())
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if SERVER_APP not in (entry / "cmdline").read_bytes():
                continue
            env = _environment(entry.name)
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue  # gone meanwhile, or another user's process
        owner = env.get(COMMAND_PID_ENV)
        home = env.get("PREFECT_HOME")
        if env.get("PREFECT__SERVER_EPHEMERAL") != "1" or not owner or not home:
            continue
        if os.path.realpath(os.path.join(cwd, os.path.expanduser(home))) != ours:
            continue
        if not _command_alive(owner) and _running(int(entry.name)):
            found.append(int(entry.name))
    return found


def stop_orphan_servers(prefect_home: Path, timeout: float = 5.0) -> list[int]:
    """Stop the orphaned ephemeral servers of `prefect_home` (SIGTERM, SIGKILL after
    `timeout`); their pids."""
    pids = orphan_servers(prefect_home)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = [pid for pid in pids if _running(pid)]
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [pid for pid in left if _running(pid)]
        if not left:
            break
    return pids
