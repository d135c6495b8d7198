"""Evaluating a sweep's models in the background, while the next ones train.

A sweep job trains a model in its main thread, then hands the rest of the model's run to this
process's `BackgroundEvaluator` (`evaluator()`): logging its inputs, epochs and model (from its
detached state), scoring the test set, test metrics, figure data and artifacts
(`experiment.evaluate_model`), then closing the run. One module holds it, so that the jobs and
the sweep's end share one per process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from typing import Any


def _nothing() -> None:
    pass


class BackgroundEvaluator:
    """Runs each model's evaluation, then closes its run (FINISHED, or FAILED with the reason).

    One worker thread takes them in order; at most `LIMIT` models wait for it, beyond that
    training waits. Other work queued with `queue_after` (a job's outcome) runs after the
    models queued before it. With `low_priority` the thread runs at a low CPU priority
    (`NICENESS`), mostly on the CPU time training leaves, and the figures are drawn by a
    process of the same priority (`draw`): drawing them in this process would hold its
    interpreter lock while training needs it. That is right where the process runs the whole
    sweep, not in one of a launcher's workers, whose jobs wait for their models at their end
    while other workers train.

    The lock is shared all the same: with `low_priority` the thread takes its turns
    (`_yield_to_training`) while the sweep's thread fits a model, which runs in TensorFlow
    without the lock, or waits for this one; not while it runs Python between two models'
    training (at most `TURN_SECONDS` per step, so the evaluation always goes on).
    """

    LIMIT = 8
    TURN_SECONDS = 0.25

    def __init__(self, low_priority: bool = True) -> None:
        start = _low_priority if low_priority else None
        self._pool = ThreadPoolExecutor(1, "finishing", initializer=start)
        self._models: list[Future] = []
        self._runs: dict[Future, str] = {}  # each queued model's future -> its open run
        self._low_priority = low_priority
        self._figures: ProcessPoolExecutor | None = None  # made by the first `draw`
        self._idle = threading.Event()  # set: the sweep's thread needs no interpreter time
        self._idle.set()

    def training_starts(self) -> None:
        """Called by the sweep's thread as a model starts fitting: it is idle from then on."""
        self._idle.set()

    def model(self, run_id: str, finish: Callable[[Callable[[], None]], Any]) -> Future:
        """Queue `finish` for the open run `run_id`, then its closing; `finish` gets a call to
        make between its steps, which takes turns with training. Called by the sweep's thread
        once the model is trained, before it goes on to the next (no longer idle)."""
        self._models = [f for f in self._models if not f.done()]
        while len(self._models) >= self.LIMIT:
            self._idle.set()
            wait(self._models, return_when=FIRST_COMPLETED)
            self._models = [f for f in self._models if not f.done()]
        future = self._pool.submit(_evaluate_and_close, run_id, finish, self._yield_to_training)
        self._models.append(future)
        self._runs[future] = run_id
        self._idle.clear()
        return future

    def outcome(self, future: Future) -> Any:
        """`future`'s result, the sweep's thread idle while it waits."""
        self._idle.set()
        return future.result()

    def _yield_to_training(self) -> None:
        """In the background thread: wait while the sweep's thread runs Python."""
        if self._low_priority:
            self._idle.wait(self.TURN_SECONDS)

    def draw(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` (an evaluation's `draw`): in the figure process with `low_priority`,
        here otherwise. `fn` and its arguments are plain data, sent to the process."""
        if not self._low_priority:
            return fn(*args)
        drawn = self.start_drawing().submit(fn, *args).result()
        self._yield_to_training()
        return drawn

    def start_drawing(self) -> ProcessPoolExecutor:
        """The figure process, started by the first call: it imports what it draws with at once,
        so that the sweep's start, not a model's evaluation, waits for it (at its low priority,
        under training, that takes seconds)."""
        if self._figures is None:
            spawn = multiprocessing.get_context("spawn")  # TensorFlow's threads: no fork
            self._figures = ProcessPoolExecutor(
                1, spawn, initializer=_figure_process, initargs=(os.getpid(),)
            )
            self._figures.submit(_import_plots)
        return self._figures

    @property
    def drawing(self) -> bool:
        """Whether the figure process is running."""
        return self._figures is not None

    def queue_after(self, work: Callable[[], Any]) -> Future:
        """Queue `work` after everything queued so far."""
        return self._pool.submit(work)

    def wait(self) -> None:
        """Return once everything queued so far is done."""
        self.outcome(self.queue_after(_nothing))

    def stop_drawing(self) -> None:
        """End the figure process, if any (the sweep exits without the interpreter's
        teardown, which would otherwise end it)."""
        if self._figures is not None:
            self._figures.shutdown(wait=True, cancel_futures=True)
            self._figures = None

    def abandon(self, reason: BaseException) -> None:
        """Drop the models not yet started and close their runs KILLED (or FAILED) with
        `reason`; the one being evaluated, if any, finishes and closes its own."""
        from pipeline.tracking import runs

        for future, run_id in list(self._runs.items()):
            if future.cancel():
                with contextlib.suppress(Exception):  # a store that is gone: runs --cleanup
                    runs.close_run(run_id, reason)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.stop_drawing()


# The background's niceness: below training, not the lowest (19), at which other busy processes
# on the machine starve it for minutes while the sweep waits for it.
NICENESS = 10


def _low_priority(who: int | None = None) -> None:
    """Give thread `who` (the calling one by default; 0: the whole process) the background's
    CPU priority (Linux keeps one per thread), never a higher one than it has: a sweep started
    with `nice -n 15` keeps 15."""
    who = threading.get_native_id() if who is None else who
    with contextlib.suppress(AttributeError, OSError):  # elsewhere: the process's priority
        niceness = max(NICENESS, os.getpriority(os.PRIO_PROCESS, who))
        os.setpriority(os.PRIO_PROCESS, who, niceness)


def _figure_process(parent: int) -> None:
    """The figure process: the background's CPU priority; an interrupt is for the sweep's
    process, which stops the models it was drawing for; it exits when that process is gone,
    however it ended (so it never holds the sweep's output open)."""
    _low_priority(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_without, args=(parent,), daemon=True).start()


def _import_plots() -> None:
    import pipeline.core.plots  # noqa: F401  (matplotlib, NumPy: what drawing needs)


def _exit_without(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def _evaluate_and_close(
    run_id: str, finish: Callable[[Callable[[], None]], Any], turn: Callable[[], None]
) -> None:
    from pipeline.tracking import runs, store

    turn()

    # A server that stopped answering fails the model here, in a moment: its run, which could
    # not be closed either, is left for `pipeline.runs --cleanup`.
    store.check_store()
    try:
        finish(turn)
    except BaseException as exc:
        runs.close_run(run_id, exc)
        raise
    runs.close_run(run_id)


_evaluator: BackgroundEvaluator | None = None  # this process's, made by its first job


def evaluator(low_priority: bool = True) -> BackgroundEvaluator:
    """This process's `BackgroundEvaluator`, made by its first job with `low_priority`."""
    global _evaluator
    if _evaluator is None:
        _evaluator = BackgroundEvaluator(low_priority)
    return _evaluator


def prepare_jobs() -> None:
    """In the sweep's process, before the jobs it runs itself: its `evaluator`, with the figure
    process starting while the sweep does."""
    evaluator().start_drawing()


def ran_jobs() -> bool:
    """Whether this process runs the sweep's jobs (`prepare_jobs` or a first job made its
    evaluator; with another launcher, its workers run them)."""
    return _evaluator is not None


def wait_for_evaluations(keep_drawing: bool = False) -> None:
    """Wait for the models this process evaluates in the background (none if it ran no job),
    then end its figure process, unless `keep_drawing` (for `draw_aside`)."""
    if _evaluator is not None:
        _evaluator.wait()
        if not keep_drawing:
            _evaluator.stop_drawing()


def draw_aside(fn: Callable[..., Any], *args: Any) -> Future:
    """`fn(*args)` (plain data in and out) in this process's figure process, while the caller
    goes on; here, at once, where the process has none (its jobs ran elsewhere). Its future."""
    if _evaluator is not None and _evaluator.drawing:
        return _evaluator.start_drawing().submit(fn, *args)  # the running one
    done: Future = Future()
    try:
        done.set_result(fn(*args))
    except Exception as exc:
        done.set_exception(exc)
    return done


def abandon(reason: BaseException) -> None:
    """Close the runs of the models still waiting for the background, KILLED for an interrupt."""
    if _evaluator is not None:
        _evaluator.abandon(reason)
