"""Tests of exporter/lifecycle.py: a reload asked for over HTTP goes to the queue the main
thread reads, and the asker gets that thread's outcome, or a bounded wait's."""

from __future__ import annotations

import queue
import signal
import threading
import time

from exporter.lifecycle import (
    SHUTTING_DOWN,
    Event,
    ReloadRequest,
    ReloadResult,
    asking,
    refuse_waiting,
)


def test_the_asker_gets_the_outcome_of_the_thread_that_reloads() -> None:
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    outcome = ReloadResult(True, "configuration reloaded: 1 mandant(s)")
    got: list[ReloadResult] = []
    asker = threading.Thread(target=lambda: got.append(asking(events, wait=10)()))
    asker.start()
    request = events.get(timeout=5)  # what the main thread does
    assert isinstance(request, ReloadRequest)
    assert got == []
    request.answer(outcome)
    asker.join(5)
    assert got == [outcome]


def test_an_unanswered_request_gives_up_after_its_wait() -> None:
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    began = time.monotonic()
    result = asking(events, wait=0.2)()
    assert 0.2 <= time.monotonic() - began < 2
    assert result == ReloadResult(
        False, "no outcome within 0.2s; the reload may still apply: see the log", done=False
    )


def test_at_shutdown_every_request_still_queued_is_answered() -> None:
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    requests = [ReloadRequest(), ReloadRequest()]
    events.put(requests[0])
    events.put(signal.SIGHUP)
    events.put(requests[1])
    refuse_waiting(events)
    assert events.empty()
    assert [request.wait(0) for request in requests] == [SHUTTING_DOWN, SHUTTING_DOWN]
    assert not SHUTTING_DOWN.done and not SHUTTING_DOWN.applied
