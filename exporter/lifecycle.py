"""Reloads asked for over HTTP (``POST /-/reload``), handed to the thread that reloads on SIGHUP.

The main thread owns the running configuration and reloads it; a web worker must not. So the
worker puts a :class:`ReloadRequest` in the main thread's queue, beside the signals, and waits
for the outcome RELOAD_WAIT seconds at most. Requests and SIGHUPs queued together share one
reload, which starts after each of them was asked: every asker gets the configuration as the
files are now.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

RELOAD_WAIT = 30.0
"""Seconds a request waits for its reload. A reload reads a few files and renders /metrics
once; that takes seconds only with a fleet of a million stations."""


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """The outcome of a reload in the words of its log lines: what was applied, or why not."""

    applied: bool
    message: str
    done: bool = True  # False: no reload ran (shutting down, or no outcome in time)


class ReloadRequest:
    """One reload asked for over HTTP; the main thread answers it."""

    def __init__(self) -> None:
        self._answered = threading.Event()
        self._result = ReloadResult(False, "not answered", done=False)

    def answer(self, result: ReloadResult) -> None:
        self._result = result
        self._answered.set()

    def wait(self, timeout: float) -> ReloadResult:
        if self._answered.wait(timeout):
            return self._result
        return ReloadResult(
            False,
            f"no outcome within {timeout:g}s; the reload may still apply: see the log",
            done=False,
        )


Event = int | ReloadRequest
"""What the main thread waits for: a signal number, or a reload asked for over HTTP."""

SHUTTING_DOWN = ReloadResult(False, "the exporter is shutting down; nothing reloaded", done=False)


def asking(
    events: queue.SimpleQueue[Event], wait: float = RELOAD_WAIT
) -> Callable[[], ReloadResult]:
    """A function for the web app that asks the main thread for a reload and waits for it."""

    def reload() -> ReloadResult:
        request = ReloadRequest()
        events.put(request)
        return request.wait(wait)

    return reload


def refuse_waiting(events: queue.SimpleQueue[Event]) -> None:
    """Answer the reloads still queued at shutdown, so that no asker waits in vain."""
    while not events.empty():
        event = events.get_nowait()
        if isinstance(event, ReloadRequest):
            event.answer(SHUTTING_DOWN)
