"""Evaluating a sweep's models in the background, while the next ones train.

A sweep job trains a model and predicts the test set in its main thread, then hands the rest of
the model's run to this process's `Finishing`: the logging and saving training held back
(`Deferred`), figures, test metrics and artifacts (`experiment.evaluate_model`), then closing
the run. One module holds it, so that the jobs and the sweep's end share one per process.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any


class Deferred:
    """Calls on a model's run held back, to be made in order by `replay`: passed to
    `experiment.train_model` as its `record`, so the next model starts training at once."""

    def __init__(self) -> None:
        self._calls: list[tuple[Future, Callable[[], Any]]] = []

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        self._calls.append((future, functools.partial(fn, *args, **kwargs)))
        return future

    def replay(self) -> None:
        """Make the held calls in order. The first that fails raises; the rest are dropped."""
        calls, self._calls = self._calls, []
        for future, call in calls:
            future.set_result(call())


class Finishing:
    """Runs each model's evaluation, then closes its run (FINISHED, or FAILED with the reason).

    One worker thread takes them in order; at most `LIMIT` models wait for it, beyond that
    training waits. Other work queued with `then` (a job's outcome) runs after the models queued
    before it. With `low_priority` the thread runs at the lowest CPU priority, on the CPU time
    training leaves: right where the process runs the whole sweep, not in one of a launcher's
    workers, whose jobs wait for their models at their end while other workers train.
    """

    LIMIT = 2

    def __init__(self, low_priority: bool = True) -> None:
        start = _lowest_priority if low_priority else None
        self._pool = ThreadPoolExecutor(1, "finishing", initializer=start)
        self._models: list[Future] = []
        self._runs: dict[Future, str] = {}  # each queued model's future -> its open run

    def model(self, run_id: str, evaluate: Callable[[], Any]) -> Future:
        """Queue `evaluate` for the open run `run_id`, then its closing."""
        self._models = [f for f in self._models if not f.done()]
        while len(self._models) >= self.LIMIT:
            wait(self._models, return_when=FIRST_COMPLETED)
            self._models = [f for f in self._models if not f.done()]
        future = self._pool.submit(_finish, run_id, evaluate)
        self._models.append(future)
        self._runs[future] = run_id
        return future

    def then(self, work: Callable[[], Any]) -> Future:
        """Queue `work` after everything queued so far."""
        return self._pool.submit(work)

    def wait(self) -> None:
        """Return once everything queued so far is done."""
        self.then(lambda: None).result()

    def abandon(self, reason: BaseException) -> None:
        """Drop the models not yet started and close their runs KILLED (or FAILED) with
        `reason`; the one being evaluated, if any, finishes and closes its own."""
        from pipeline.tracking import runs

        for future, run_id in list(self._runs.items()):
            if future.cancel():
                with contextlib.suppress(Exception):  # a store that is gone: runs --cleanup
                    runs.close_run(run_id, reason)
        self._pool.shutdown(wait=True, cancel_futures=True)


def _lowest_priority() -> None:
    """Give the calling thread the lowest CPU priority (Linux keeps one per thread)."""
    with contextlib.suppress(AttributeError, OSError):  # elsewhere: the process's priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _finish(run_id: str, evaluate: Callable[[], Any]) -> None:
    from pipeline.tracking import runs, store

    # A server that stopped answering fails the model here, in a moment: its run, which could
    # not be closed either, is left for `pipeline.runs --cleanup`.
    store.check_store()
    try:
        evaluate()
    except BaseException as exc:
        runs.close_run(run_id, exc)
        raise
    runs.close_run(run_id)


_finishing: Finishing | None = None  # this process's, made by its first job


def finishing(low_priority: bool = True) -> Finishing:
    """This process's `Finishing`, made by its first job with `low_priority`."""
    global _finishing
    if _finishing is None:
        _finishing = Finishing(low_priority)
    return _finishing


def ran_jobs() -> bool:
    """Whether this process ran sweep jobs (with another launcher, its workers did)."""
    return _finishing is not None


def finished() -> None:
    """Wait for the models this process evaluates in the background (none if it ran no job)."""
    if _finishing is not None:
        _finishing.wait()


def abandon(reason: BaseException) -> None:
    """Close the runs of the models still waiting for the background, KILLED for an interrupt."""
    if _finishing is not None:
        _finishing.abandon(reason)
