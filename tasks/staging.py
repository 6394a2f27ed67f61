"""Staging folders that name their owning process, so a later command can remove what a
killed one left (a backup's staging copy can be tens of MB).

A folder is `<root>/<prefix><host>.<pid>-<random>`: the owner is in the name itself, written
atomically with the folder, so there is no moment a live folder looks ownerless.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

OWNER_NAME = re.compile(r"-(?P<host>[0-9a-f]{8})\.(?P<pid>\d+)-[^-.]+$")


def host_tag() -> str:
    """This host in 8 hex characters (folders of another host or container are never judged)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def process_alive(pid: int) -> bool:
    """Whether a process runs here (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        return psutil.Process(pid).status() not in {psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD}
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # another user's process: it exists


@contextmanager
def staging_folder(prefix: str, root: Path | None = None) -> Iterator[Path]:
    """A new folder under `root` (the system temp folder when None) owned by this process,
    removed on exit; dead owners' folders under the same root are removed first."""
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        remove_dead_staging(root)
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{host_tag()}.{os.getpid()}-", dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_dead_staging(root: Path) -> list[Path]:
    """Remove the staging folders under `root` whose owning process on this host is gone;
    the folders removed. Live owners' folders, other hosts' and other names are kept."""
    removed: list[Path] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    here = host_tag()
    for entry in entries:
        found = OWNER_NAME.search(entry.name)
        if not found or found["host"] != here or not entry.is_dir() or entry.is_symlink():
            continue
        if int(found["pid"]) != os.getpid() and not process_alive(int(found["pid"])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
