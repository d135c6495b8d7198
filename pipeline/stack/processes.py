"""Starting a service in the background and stopping it with everything it started.

Each service runs in a session (and process group) of its own, so that `down` finds every process
it started, workers included, through the group. A process counts as gone when no live process is
left in its group; a zombie, which nobody may reap inside a container, is not alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.core.errors import PipelineError


class StackError(PipelineError):
    """A stack that cannot start, or is not what the folder holds."""


def spawn(cmd: list[str], log: Path, env: dict[str, str], pid_file: Path) -> int:
    """Start `cmd` in a new session, its output appended to `log`; write and return its pid."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    pid_file.write_text(f"{process.pid}\n")
    return process.pid


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _reap(pid: int) -> None:
    """Collect `pid`'s exit status when it is this process's child, so it leaves no zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def alive_in_group(group: int) -> list[int]:
    """The live (not zombie) processes whose process group is `group`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == group:
            found.append(int(entry.name))
    return found


def stop_group(group: int, seconds: float = 30.0) -> None:
    """SIGTERM to the process group `group`, SIGKILL to whatever is left after `seconds`."""
    for sig, wait in ((signal.SIGTERM, seconds), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(group)
            if not alive_in_group(group):
                return
            time.sleep(0.1)
    left = alive_in_group(group)
    if left:
        raise StackError(f"processes {left} of group {group} did not stop; kill them by hand")


def port_in_use(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port`, or the port cannot be bound."""
    with socket.socket() as sock:
        # As servers do: a port whose last connections are in TIME_WAIT is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def wait_until(
    ready: Callable[[], bool], what: str, pid: int | None, log: Path, seconds: float
) -> None:
    """Poll `ready` until it is true; fail naming `what` and the end of `log` if the process
    `pid` ends first or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        if pid is not None:
            _reap(pid)
            if not alive_in_group(pid):
                raise StackError(f"{what} exited while starting: {last_line(log)} (log: {log})")
        time.sleep(0.2)
    raise StackError(
        f"{what} did not answer within {seconds:.0f} s: {last_line(log)} (log: {log})"
    )


def last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return "no log"
    return next((line for line in reversed(lines) if line), "an empty log")
