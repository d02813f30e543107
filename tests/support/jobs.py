"""The app's local job queue, made waitable: tests end only once the jobs they started have run."""

import math
import threading
from collections.abc import Callable
from typing import Any

from handler.jobs import LocalJobQueue

Runner = Callable[[str], Any]


class WaitableJobQueue(LocalJobQueue):
    """A LocalJobQueue that counts the jobs it was given and has run, so a test can wait for them.

    The app sets `runner` once it is built; each job the worker runs through it is counted done,
    however it ends. A job submitted while no runner is set is never counted done.
    """

    def __init__(self, max_waiting: int = 8, max_wait_s: float = math.inf) -> None:
        self._unfinished = 0
        self._changed = threading.Condition()
        self._runner: Runner | None = None
        super().__init__(max_waiting, max_wait_s)

    @property
    def runner(self) -> Runner | None:
        """The app's runner, wrapped to count each job done."""
        return None if self._runner is None else self._run_counted

    @runner.setter
    def runner(self, runner: Runner | None) -> None:
        self._runner = runner

    def submit(self, job_id: str) -> None:
        """Queue the job, counting it unfinished first so a wait cannot miss it."""
        with self._changed:
            self._unfinished += 1
        super().submit(job_id)

    def wait_until_idle(self, timeout_s: float = 120.0) -> None:
        """Block until every job submitted so far has run."""
        with self._changed:
            assert self._changed.wait_for(lambda: self._unfinished == 0, timeout_s), "jobs still running"

    def _run_counted(self, job_id: str) -> Any:
        assert self._runner is not None
        try:
            return self._runner(job_id)
        finally:
            with self._changed:
                self._unfinished -= 1
                self._changed.notify_all()
