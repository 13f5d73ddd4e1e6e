"""Fixtures that start real simulator and exporter processes and stop them afterwards."""

from __future__ import annotations

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
