import os
import sys
import threading

import pytest

from pipeline.sweeps import finishing

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="a niceness per thread: Linux")


def niceness_after(start: int) -> int:
    """The niceness a new thread has after `_low_priority`, having started at `start`."""
    seen: list[int] = []

    def thread() -> None:
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, start)
        finishing._low_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, me))

    worker = threading.Thread(target=thread)
    worker.start()
    worker.join()
    return seen[0]


def test_the_background_runs_at_its_niceness_and_never_above_the_callers() -> None:
    here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert niceness_after(here) == max(here, finishing.NICENESS)
    lower = max(here, finishing.NICENESS) + 2  # started lower than the background's: kept
    assert niceness_after(lower) == lower
