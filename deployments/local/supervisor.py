"""The local services under supervisord: a generated config (0600) in the services folder,
supervisord started with it, programs started in order through its XML-RPC interface on a
unix socket (0700), and `shutdown` to stop them all."""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path

import psutil
from supervisor.xmlrpc import SupervisorTransport

from deployments.local.servers import Program, ServiceError, write_private

CONFIG = "supervisord.conf"
SOCKET = "supervisor.sock"


def _value(text: object) -> str:
    """A config value: supervisord expands %(name)s, so a literal % is doubled."""
    if '"' in str(text):  # values sit in double quotes in `environment=`
        raise ServiceError("a supervisord.conf value holds a double quote")
    return str(text).replace("%", "%%")


def write_config(root: Path, programs: list[Program]) -> Path:
    """DIR/supervisord.conf with one program per server, none started by supervisord itself
    (`start` starts them in order); logs in DIR/logs."""
    logs = root / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    text = (
        f"[unix_http_server]\nfile={_value(root / SOCKET)}\nchmod=0700\n\n"
        f"[supervisord]\nlogfile={_value(logs / 'supervisord.log')}\n"
        f"pidfile={_value(root / 'supervisord.pid')}\nchildlogdir={_value(logs)}\numask=077\n\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
        f"[supervisorctl]\nserverurl=unix://{_value(root / SOCKET)}\n"
    )
    for priority, program in enumerate(programs, start=1):
        env = ",".join(f'{k}="{_value(v)}"' for k, v in program.env.items())
        text += (
            f"\n[program:{program.name}]\n"
            f"command={_value(shlex.join(program.command))}\n"
            f"directory={_value(program.cwd)}\n"
            f"environment={env}\n"
            f"priority={priority}\nautostart=false\numask=077\n"
            f"redirect_stderr=true\nstdout_logfile={_value(logs / f'{program.name}.log')}\n"
            "stopwaitsecs=30\n"
        )
        if program.user:
            text += f"user={program.user}\n"
        # PostgreSQL: SIGINT is its fast shutdown and it stops its own backends; the Python
        # servers' children (uvicorn workers, flow runs) go with their process group.
        text += "stopsignal=INT\n" if program.name == "postgres" else "stopasgroup=true\n"
    path = root / CONFIG
    write_private(path, text)
    return path


def rpc(root: Path) -> xmlrpc.client.ServerProxy:
    """supervisord's XML-RPC interface over the unix socket in `root`."""
    transport = SupervisorTransport(serverurl=f"unix://{root / SOCKET}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def running(root: Path) -> bool:
    """Whether a supervisord answers on the socket in `root`."""
    try:
        return rpc(root).supervisor.getState()["statename"] == "RUNNING"
    except (OSError, xmlrpc.client.Error):
        return False


def start_supervisord(root: Path, env: dict[str, str], timeout: float = 30.0) -> None:
    """Start supervisord on DIR/supervisord.conf (it daemonizes) and wait until it answers."""
    cmd = [sys.executable, "-m", "supervisor.supervisord", "-c", str(root / CONFIG)]
    done = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True)
    deadline = time.monotonic() + timeout
    while not running(root):
        if done.returncode or time.monotonic() > deadline:
            raise ServiceError(f"supervisord did not start: {done.stdout}{done.stderr}".strip())
        time.sleep(0.1)


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for error messages."""
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def start_program(root: Path, name: str, healthy: Callable[[], bool], timeout: float) -> float:
    """Start program `name` and wait until `healthy()`; the seconds that took. A program that
    supervisord gives up on, or that stays unhealthy, is stopped and named with its log."""
    server = rpc(root)
    began = time.monotonic()
    log = root / "logs" / f"{name}.log"
    try:
        server.supervisor.startProcess(name, False)
    except xmlrpc.client.Fault as fault:  # it exited before supervisord saw it start
        with contextlib.suppress(xmlrpc.client.Fault):  # no retries in BACKOFF
            server.supervisor.stopProcess(name)
        raise ServiceError(
            f"{name} exited while starting ({fault.faultString}); log {log}:\n{log_tail(log)}"
        ) from None
    while time.monotonic() - began < timeout:
        state = server.supervisor.getProcessInfo(name)["statename"]
        if state in ("FATAL", "EXITED"):
            raise ServiceError(f"{name} exited while starting; log {log}:\n{log_tail(log)}")
        try:
            if state == "RUNNING" and healthy():
                return time.monotonic() - began
        except ServiceError:
            server.supervisor.stopProcess(name)
            raise
        time.sleep(0.25)
    server.supervisor.stopProcess(name)
    raise ServiceError(f"{name} not healthy within {timeout:.0f} s; log {log}:\n{log_tail(log)}")


def programs(root: Path) -> dict[str, dict]:
    """supervisord's record of each program (statename, pid, ...); {} when it is not running."""
    if not running(root):
        return {}
    return {info["name"]: info for info in rpc(root).supervisor.getAllProcessInfo()}


def shutdown(root: Path, timeout: float = 90.0) -> dict[str, list[int]]:
    """Stop every program and supervisord (`supervisorctl shutdown`); the processes of each
    program that are still alive afterwards (none, normally)."""
    server = rpc(root)
    supervisord = psutil.Process(server.supervisor.getPID())
    tree: dict[str, list[psutil.Process]] = {}
    for name, info in programs(root).items():
        if info["pid"]:
            leader = psutil.Process(info["pid"])
            tree[name] = [leader, *leader.children(recursive=True)]
    server.supervisor.shutdown()
    supervisord.wait(timeout)
    left = {}
    for name, procs in tree.items():
        _, alive = psutil.wait_procs(procs, timeout=5)
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        if alive:
            left[name] = sorted(p.pid for p in alive)
    return left
