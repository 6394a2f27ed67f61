"""Telling a live training process from one a kill left behind (registry.tracking.owner)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from registry.tracking import owner, owner_alive


def test_this_process_is_alive_a_finished_one_is_not() -> None:
    assert owner_alive(owner()) is True
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    host, _, started = owner().split(":")
    assert owner_alive(f"{host}:{child.pid}:{started}") is False


def test_a_reused_pid_another_host_or_a_bad_tag_are_told_apart() -> None:
    host, pid, started = owner().split(":")
    # Same pid, another start time: the pid was reused by a new process.
    assert owner_alive(f"{host}:{pid}:{int(started) - 1}") is False
    # Another host cannot be checked from here: unknown, never repaired.
    assert owner_alive(f"not-{socket.gethostname()}:{os.getpid()}:{started}") is None
    assert owner_alive("garbage") is None
