"""Fixtures that start real simulator and exporter processes and stop them afterwards, the
guard that keeps every test that starts a process in the ``e2e`` tier, and the last line of a
run: the system tools it skipped tests for."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.helpers import MISSING_TOOL, ExporterProcess, SimulatorProcess


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


STARTS_A_PROCESS = ((subprocess, "Popen"), (os, "fork"), (os, "posix_spawn"), (os, "system"))
"""What starting a child process goes through (subprocess.run, .check_output and the process
helpers of tests.helpers all use Popen)."""


@contextmanager
def processes_refused(item: pytest.Item) -> Iterator[None]:
    """Around a test not marked e2e: starting a process fails the test, naming the fix."""
    if item.get_closest_marker("e2e"):
        yield
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(
            f"{item.nodeid} starts a process: mark it (or its module) pytest.mark.e2e, "
            "so that `make test-fast` stays the quick unit tier"
        )

    with pytest.MonkeyPatch.context() as patch:
        for module, name in STARTS_A_PROCESS:
            patch.setattr(module, name, refuse)
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """Fixture set-up counts too: a module-scoped fixture may start the process."""
    with processes_refused(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with processes_refused(item):
        return (yield)


def skipped_for_tools(reports: list[pytest.TestReport]) -> list[str]:
    """The tools that skipped reports name as missing (tests.helpers.require_tool), sorted."""
    tools = set()
    for report in reports:
        if isinstance(report.longrepr, tuple):
            match = MISSING_TOOL.match(report.longrepr[2].removeprefix("Skipped: "))
            if match:
                tools.add(match.group(1))
    return sorted(tools)


def pytest_unconfigure(config: pytest.Config) -> None:
    """One line after everything else (xdist workers report to the controller, which prints
    it): the tools missing here, so a skipped tier is not taken for a passed one."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or hasattr(config, "workerinput"):
        return
    tools = skipped_for_tools(reporter.stats.get("skipped", []))
    if tools:
        reporter.write_line(
            f"skipped tests for want of {', '.join(tools)}: docs/development.md#system-tools"
        )
