"""The web server's workers: a bounded pool of threads and a bounded, short queue before it.

A request finds a worker free within moments when the workers are merely busy finishing (a
client may send its next request before the worker of its last has closed), so a full pool
queues instead of refusing; a request that cannot have a worker soon is given back for a 503.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

QUEUE_WAIT = 1.0
"""Seconds a complete request may wait for a free worker before it gets 503."""

Job = TypeVar("Job")


class Workers(Generic[Job]):
    """At most ``size`` daemon threads, started as needed, and a queue of as many jobs for
    them. ``submit`` says False when the queue is full, ``stale`` gives back what waited
    QUEUE_WAIT seconds."""

    def __init__(self, size: int, work: Callable[[Job], None], name: str) -> None:
        self._size = size
        self._work = work
        self._name = name
        self._queue: deque[tuple[float, Job]] = deque()  # (since when, job)
        self._ready = threading.Condition()
        self._busy = 0
        self._threads = 0
        self._closing = False

    def submit(self, job: Job) -> bool:
        with self._ready:
            if len(self._queue) >= self._size:
                return False
            if self._busy + len(self._queue) >= self._threads < self._size:
                try:
                    threading.Thread(target=self._run, name=self._name, daemon=True).start()
                except RuntimeError:  # the system has no thread to give: the others will do
                    if self._threads == 0:
                        return False
                else:
                    self._threads += 1
            self._queue.append((time.monotonic(), job))
            self._ready.notify()
        return True

    def stale(self) -> list[Job]:
        """The jobs that have waited QUEUE_WAIT seconds for a worker, out of the queue."""
        too_old = time.monotonic() - QUEUE_WAIT
        with self._ready:
            gone = []
            while self._queue and self._queue[0][0] <= too_old:
                gone.append(self._queue.popleft()[1])
            return gone

    def close(self) -> list[Job]:
        """Let every thread end once it is done with its job; the jobs still queued."""
        with self._ready:
            self._closing = True
            self._ready.notify_all()
            gone = [job for _, job in self._queue]
            self._queue.clear()
            return gone

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._queue:
                    self._threads -= 1
                    return
                job = self._queue.popleft()[1]
                self._busy += 1
            try:
                self._work(job)
            finally:
                with self._ready:
                    self._busy -= 1
