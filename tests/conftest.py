"""Fixtures that start real simulator and exporter processes and stop them afterwards."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import ExporterProcess, SimulatorProcess


@pytest.fixture
def simulator_process() -> Iterator[Callable[..., SimulatorProcess]]:
    started: list[SimulatorProcess] = []

    def start(*args: str) -> SimulatorProcess:
        process = SimulatorProcess(*args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def exporter_process() -> Iterator[Callable[..., ExporterProcess]]:
    started: list[ExporterProcess] = []

    def start(args: list[str], env: dict[str, str], scheme: str = "http") -> ExporterProcess:
        process = ExporterProcess(args, env, scheme)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger back as it was: setup_logging replaces its handlers, and a handler
    left on a test's captured (then closed) stderr breaks the log records of later tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name in ("urllib3", "apscheduler"):
        logging.getLogger(name).setLevel(logging.NOTSET)
