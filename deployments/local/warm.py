"""A warm command process per home: libraries imported once, each command a fork of it.

A `pynomaly` command spends seconds importing Great Expectations, MLflow, scikit-learn/PyOD and
Prefect before it does any work. On embedded defaults, once the background Prefect API runs
(deployments/local/background.py), a command that finishes starts this server, detached: it
points PREFECT_API_URL at that API, imports what commands need, and listens on a unix socket in
`<prefect home>/background/warm/` (0700). A later command's client (deployments/main.py, this
module's stdlib-only half) hands it argv, cwd, its environment and its stdin/stdout/stderr
(SCM_RIGHTS); the server forks, and the child runs the typer app as the normal entry does,
sends its exit code back and exits. The client forwards SIGINT/SIGTERM/SIGHUP to the child; a
child whose client is gone (kill -9) interrupts itself as SIGTERM does, so cleanup runs.

Never stale: the client hands over only when the server's fingerprint (the PYNOMALY_, PREFECT_,
MLFLOW_, AWS_, GX_ variables, the interpreter and the newest .py file of the packages) is its
own, and the server still serves the background API it imported with. The server stops with
that API (idle timeout, replacement, `services down`), and with `services down` itself.
`python -m deployments.local.warm` is the server. Import-time: stdlib only (the client path).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

FINGERPRINT_PREFIXES = ("PYNOMALY_", "PREFECT_", "MLFLOW_", "AWS_", "GX_")
# Set by a command for itself (never by the user): not part of the fingerprint.
COMMAND_ONLY = ("PYNOMALY_COMMAND_PID", "PYNOMALY_PREFECT_EMBEDDED_URL")
PACKAGES = ("deployments", "flows", "tasks", "registry", "data_checks", "pynomaly")
ROOT = Path(__file__).resolve().parents[2]
TRUE = {"1", "true", "yes", "on", "t", "y"}  # what pydantic reads as True
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
MODULE = "deployments.local.warm"


# Where things are (the same rules as pynomaly.settings, without importing pydantic)


def prefect_home(env: dict[str, str]) -> Path:
    if env.get("PREFECT_HOME"):
        return Path(env["PREFECT_HOME"]).expanduser().resolve()
    return Path(env.get("PYNOMALY_HOME") or ".pynomaly").expanduser().resolve() / "prefect"


def folder(home: Path) -> Path:
    return home / "background" / "warm"


def _address(path: Path) -> str:
    """A unix socket address for `path` within the 108-byte limit (long temp folders)."""
    if len(os.fsencode(path)) < 100:
        return str(path)
    fd = os.open(path.parent, os.O_PATH)  # kept open for this short-lived process
    return f"/proc/self/fd/{fd}/{path.name}"


def enabled(env: dict[str, str]) -> bool:
    """Embedded background Prefect API, not opted out: PYNOMALY_WARM unset or true."""
    return (
        env.get("PYNOMALY_PREFECT_MODE", "background") == "background"
        and env.get("PYNOMALY_WARM", "true").strip().lower() in TRUE
        and not env.get("PREFECT_API_URL")
    )


def _newest_source() -> float:
    newest = 0.0
    for package in PACKAGES:
        for base, dirs, files in os.walk(ROOT / package):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in files:
                if name.endswith(".py"):
                    with contextlib.suppress(OSError):
                        newest = max(newest, os.stat(os.path.join(base, name)).st_mtime)
    return newest


def fingerprint(env: dict[str, str]) -> str:
    """What a command's process depends on: its settings' variables, interpreter and code."""
    digest = hashlib.sha256()
    for name in sorted(env):
        if name.startswith(FINGERPRINT_PREFIXES) and name not in COMMAND_ONLY:
            digest.update(f"{name}={env[name]}\0".encode())
    digest.update(f"{sys.executable}\0{_newest_source()!r}".encode())
    return digest.hexdigest()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _is_server(pid: int) -> bool:
    try:
        return MODULE in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def read_state(home: Path) -> dict | None:
    """The warm server of this Prefect home (pid, socket, fingerprint, prefect_url), or None."""
    state = _read_json(folder(home) / "warm.json")
    return state if state and _is_server(state["pid"]) else None


def _background_url(home: Path) -> str | None:
    return (_read_json(home / "background" / "server.json") or {}).get("url")


# Client


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def handoff(argv: list[str], env: dict[str, str]) -> int | None:
    """Run the command in this home's warm process: its exit code, or None when there is no
    matching warm process (the caller runs the command itself)."""
    if not enabled(env) or "--debug" in argv:
        return None  # --debug: library logs as configured in-process
    home = prefect_home(env)
    state = read_state(home)
    if state is None or state.get("fingerprint") != fingerprint(env):
        return None
    if _background_url(home) != state.get("prefect_url"):
        return None  # the background API was replaced: this server stops soon
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(_address(folder(home) / "sock"))
        request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": env}).encode()
        data = struct.pack("!I", len(request)) + request
        sent = socket.send_fds(sock, [data], [0, 1, 2])
        sock.sendall(data[sent:])
        pid_bytes = _recv_exact(sock, 4)
    except OSError:
        sock.close()
        return None
    if pid_bytes is None:
        sock.close()
        return None  # the server refused before the command started: run it here
    (child,) = struct.unpack("!i", pid_bytes)
    forwarded: list[int] = []

    def forward(signum: int, frame: object) -> None:
        """To the command's process group: what it started gets the signal too, as a
        terminal's Ctrl-C reaches every process of an in-process command."""
        forwarded.append(signum)
        with contextlib.suppress(OSError):
            os.killpg(child, signum)

    for signum in SIGNALS:
        signal.signal(signum, forward)
    try:
        code_bytes = _recv_exact(sock, 4)
        with contextlib.suppress(OSError):
            while sock.recv(64):  # until the child has exited (its end closes)
                pass
    except OSError:
        code_bytes = None
    sock.close()
    if code_bytes is not None:
        return struct.unpack("!i", code_bytes)[0]
    if forwarded:
        return 128 + forwarded[-1]
    sys.stderr.write("pynomaly: the command process ended without an exit code\n")
    return 1


def after_command(env: dict[str, str]) -> None:
    """After a command ran in-process: start this home's warm server if the background API
    runs and no warm server does (one of another fingerprint is replaced)."""
    if not enabled(env):
        return
    home = prefect_home(env)
    if _background_url(home) is None:
        return
    here = folder(home)
    here.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(here / "warm.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            state = read_state(home)
            if state is None or state.get("fingerprint") == fingerprint(env):
                return  # one runs (or is importing) for this environment
            os.kill(state["pid"], signal.SIGTERM)  # stale: the new one waits for its lock
    root = str(ROOT)
    server_env = dict(env)
    server_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    with open(here / "warm.log", "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", MODULE],
            env=server_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(home: Path, timeout: float = 10.0) -> int | None:
    """Stop this Prefect home's warm server (`services down`); its pid. Running commands
    (its children) finish."""
    try:
        pid = int((folder(home.expanduser().resolve()) / "warm.pid").read_text())
    except (OSError, ValueError):
        return None
    if not _is_server(pid) or _zombie(pid):
        return None
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _is_server(pid) and not _zombie(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    return pid


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


# Server


def _log(message: str) -> None:
    sys.stdout.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} warm[{os.getpid()}] {message}\n")
    sys.stdout.flush()


def preload() -> None:
    """Import what commands need (no clients, threads or connections are made by these)."""
    import importlib
    import pkgutil

    import deployments.cli  # noqa: F401 - the app and its command modules
    import flows

    for module in pkgutil.iter_modules(flows.__path__):
        importlib.import_module(f"flows.{module.name}")
    for name in (
        "prefect",
        "prefect.client.orchestration",
        "mlflow",
        "mlflow.pyfunc",
        "sklearn",
        "pyod",
        "great_expectations",
        "pandas",
        "pyarrow",
        "sqlalchemy",
        "evidently",
    ):
        importlib.import_module(name)


def _native_threads() -> list[str]:
    names = []
    for task in sorted(os.listdir("/proc/self/task")):
        with contextlib.suppress(OSError):
            names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
    return names


def serve() -> None:
    """Import, listen, fork a child per command until the background API it serves is gone."""
    import threading

    env = dict(os.environ)
    mine = fingerprint(env)  # before this process sets anything for itself
    home = prefect_home(env)
    here = folder(home)
    here.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = open(here / "warm.lock", "a")  # held for life: one server per home
    deadline = time.monotonic() + 15
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                _log("another warm server runs for this home")
                return
            time.sleep(0.2)
    (here / "warm.pid").write_text(str(os.getpid()))  # `stop` finds it while it imports
    url = _background_url(home)
    if url is None:
        _log("no background Prefect API runs for this home")
        return
    began = time.monotonic()
    # As a command does before Prefect is imported (deployments.cli.output.run).
    os.environ["PREFECT_API_URL"] = os.environ["PYNOMALY_PREFECT_EMBEDDED_URL"] = url
    from deployments.cli.output import quiet_libraries
    from pynomaly.settings import apply_runtime_environment, get_settings

    quiet_libraries()
    apply_runtime_environment(get_settings())
    preload()
    get_settings.cache_clear()
    _log(
        f"imported in {time.monotonic() - began:.1f} s; Python threads "
        f"{threading.active_count()} {[t.name for t in threading.enumerate()]}; "
        f"native threads {_native_threads()}"
    )
    os.chdir(here)  # and bind by the short relative name (unix socket paths are short)
    path = here / "sock"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("sock")
    os.chmod(path, 0o600)
    listener.listen(16)
    state = {"pid": os.getpid(), "socket": str(path), "fingerprint": mine, "prefect_url": url}
    (here / "warm.json.tmp").write_text(json.dumps(state))
    os.replace(here / "warm.json.tmp", here / "warm.json")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    signal.signal(signal.SIGHUP, lambda signum, frame: sys.exit(0))
    _log(f"listening on {path}")
    try:
        # Serve while the background API it imported with is the home's and this is the
        # home's warm server (the home removed, the API stopped or replaced: stop).
        while (
            _background_url(home) == url
            and (_read_json(here / "warm.json") or {}).get("pid") == os.getpid()
        ):
            ready, _, _ = select.select([listener], [], [], 1.0)
            _reap()
            if ready:
                _accept(listener, url)
    finally:
        if (_read_json(here / "warm.json") or {}).get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                (here / "warm.json").unlink()
            with contextlib.suppress(OSError):
                path.unlink()
        _log("stopped")


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _accept(listener: socket.socket, url: str) -> None:
    try:
        conn, _ = listener.accept()
    except OSError:
        return
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    if uid != os.getuid():  # the folder is 0700 already; a second lock
        conn.close()
        return
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setpgid(0, 0)  # its own process group, which the client signals
            listener.close()
            code = _child(conn, url)
        except BaseException:  # noqa: BLE001 - a child never returns into the server loop
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    conn.close()
    _log(f"forked {pid}")


def _child(conn: socket.socket, url: str) -> int:
    """Take over the client's command: its fds, cwd, environment and argv; run; report."""
    import atexit
    import threading

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    if len(fds) != 3 or len(data) < 4:
        return 1
    (size,) = struct.unpack("!I", data[:4])
    body = data[4:]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            return 1
        body += chunk
    request = json.loads(body)
    if _background_url(prefect_home(request["env"])) != url:
        return 0  # closes without a pid: the client runs the command itself
    _log(f"command {os.getpid()}: {' '.join(request['argv'][1:])}")  # still the log file
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = request["argv"]
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.reconfigure(line_buffering=stream.isatty())
    from deployments.cli import output
    from pynomaly.settings import get_settings

    # The shared consoles were made for the server's log file: remake them for these fds.
    output.out.__init__()
    output.err.__init__(stderr=True)
    get_settings.cache_clear()
    conn.sendall(struct.pack("!i", os.getpid()))
    done = threading.Event()

    def watch() -> None:
        """The client went away (kill -9): stop as SIGTERM stops a command."""
        with contextlib.suppress(OSError):
            while conn.recv(64):
                pass
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="pynomaly-client-watch", daemon=True).start()
    code = _run_app()
    # What interpreter exit does: wait for non-daemon threads, atexit handlers, flush.
    with contextlib.suppress(Exception):
        threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    done.set()
    with contextlib.suppress(OSError):
        conn.sendall(struct.pack("!i", code))
    return code


def _run_app() -> int:
    """The typer app as the console script runs it; its exit code."""
    import traceback

    from deployments.cli import app

    try:
        # Click names the program after __main__, which is this module here: the console
        # script's name instead, as when it runs in-process.
        app(prog_name=os.path.basename(sys.argv[0]))
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        sys.stderr.write(f"{exc.code}\n")
        return 1
    except KeyboardInterrupt:
        traceback.print_exc()
        return 128 + signal.SIGINT
    except BaseException:  # noqa: BLE001 - as the interpreter would: traceback, exit 1
        traceback.print_exc()
        return 1
    return 0


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        serve()


if __name__ == "__main__":
    main()
