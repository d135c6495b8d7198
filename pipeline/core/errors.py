"""Errors a user can act on, and the one way every command reports them.

A `PipelineError` says what was wrong (the thing, the value received) and what to do; `run_cli`
prints it as one line on stderr and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable
from typing import Any


class PipelineError(Exception):
    """A failure caused by input or environment that the user can fix."""

    exit_code = 1


class ConfigError(PipelineError):
    """A config value that is unknown, of the wrong type or out of range."""

    exit_code = 2


class DataError(PipelineError):
    """A data file that is missing, corrupt or cannot be fetched."""


def raise_interrupt(signum: int, _frame: Any) -> None:
    """The SIGTERM handler of every command that installs one: a SIGTERM interrupts like
    Ctrl-C (`KeyboardInterrupt`), naming the signal, so runs end KILLED and files are removed."""
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _free_space(where: str) -> str:
    folder = os.path.dirname(os.path.abspath(where)) or "."
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)  # the nearest folder that exists: the same device
    try:
        free = shutil.disk_usage(folder).free
        return f"{free / 2**20:.0f} MB free there now"
    except OSError:
        return "its free space unknown"


def cannot_write(exc: OSError) -> str | None:
    """What to tell a user whose disk (or quota) filled up, or whose folder cannot be written,
    while a file was written; None for any other error."""
    where = exc.filename or "a file"
    if exc.errno in FULL_DISK:
        return (
            f"no space left on the device writing {where} ({exc.strerror}; "
            f"{_free_space(where)}). Nothing half written was kept: free some space (`uv run "
            "dvc gc` drops cached data no commit uses) and run the command again."
        )
    if exc.errno in NOT_WRITABLE:
        return (
            f"cannot write {where} ({exc.strerror}; {_free_space(where)}): make its folder "
            "writable by this user (or the file system read-write) and run the command again."
        )
    return None


def run_cli(main: Callable[..., Any], *args: Any, skip_teardown: bool = False) -> None:
    """Call a command's `main`, turning a `PipelineError` into a message and an exit code, and
    an interrupt into one line and exit code 130 (the runs it opened are closed KILLED by then).

    With `skip_teardown`, a `main` that succeeded ends with `exit_now`: the next stage starts
    sooner.
    """
    from pipeline.core.console import quiet

    quiet()
    try:
        main(*args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:
        said = cannot_write(exc)
        if said is None:
            raise
        print(f"error: {said}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as exc:  # Ctrl-C, or a SIGTERM the command turned into one
        print(f"stopped ({exc or 'Ctrl-C'})", file=sys.stderr)
        sys.exit(130)
    if skip_teardown:
        exit_now()


def exit_now() -> None:
    """Exit 0 at once, output flushed, without tearing down the interpreter's modules: once
    every file and MLflow run is closed, TensorFlow's teardown only costs a second or more."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def command_parser(command: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser for `uv run python -m pipeline.<command>`: its usage line names the
    command as users type it, its help is the module's docstring."""
    text = (doc or "").strip()
    summary, _, details = text.partition("\n\n")
    return argparse.ArgumentParser(
        prog=f"uv run python -m pipeline.{command}",
        description=summary,
        epilog=details or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
