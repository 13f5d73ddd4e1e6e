"""Test helpers: bounded waiting, external tools, real simulator and exporter processes."""

from __future__ import annotations

import importlib.util
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from readme_renderer.markdown import render as render_markdown

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def load_script(path: Path) -> ModuleType:
    """A script of the repository (deploy/prometheusrule.py, deploy/image.py), not a package,
    loaded from its path as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wait_until(predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a text exposition, keyed by (name, frozenset of label items)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def rendered_links(markdown: str) -> list[str]:
    """Every link and image target of ``markdown`` as the package index renders it (PyPI uses
    readme_renderer), but for the anchors the renderer adds to its own headings, which lead to
    an id of the same page."""
    html = render_markdown(markdown)
    assert html is not None, "readme_renderer could not render it (readme-renderer[md])"
    found: list[str] = []
    ids: set[str] = set()

    class Links(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.extend(value for name, value in attrs if name in ("href", "src") and value)
            ids.update(value for name, value in attrs if name == "id" and value)

    Links().feed(html)
    return [link for link in found if link.removeprefix("#") not in ids]


TOOL_PACKAGES = {
    "amtool": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "buildah": "buildah",
    "debootstrap": "debootstrap",
    "systemd-analyze": "systemd",
    "kubectl": "kubernetes-client",
    "faketime": "faketime",
    "make": "make",
}
"""Debian packages of the external tools the tests use, where not 'prometheus'."""


MISSING_TOOL = re.compile(r"^(\S+) is not installed \(Debian package '")
"""The start of the reason require_tool skips with; tests/conftest.py collects the names."""


def require_tool(name: str) -> str:
    """Path of an external tool; skip the test without it, but fail in CI where it must exist."""
    path = shutil.which(name)
    if path:
        return path
    package = TOOL_PACKAGES.get(name, "prometheus")
    message = f"{name} is not installed (Debian package '{package}'; .ci/run installs it)"
    assert MISSING_TOOL.match(message)
    if IN_CI:
        pytest.fail(message + " but CI=true requires it")
    pytest.skip(message)


class SteppedClock:
    """The wall clock of the child processes given ``environment()``, stepped while they run.

    libfaketime reads the offset from a file at every clock reading. CLOCK_MONOTONIC stays
    real, as in an NTP step or an operator's ``date -s``: only the wall clock jumps.
    """

    def __init__(self, directory: Path) -> None:
        require_tool("faketime")
        found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
        if not found:
            pytest.fail("faketime is installed but /usr/lib/*/faketime/libfaketime.so.1 is not")
        self.library = found[0]
        self.file = directory / "faketime.rc"
        self.set(0)

    def set(self, offset: float) -> None:
        """Make the wall clock ``offset`` seconds off the real one, in one step."""
        partial = self.file.with_suffix(".partial")
        partial.write_text(f"{offset:+.0f}\n")
        partial.replace(self.file)  # a reader never sees a half-written file

    def environment(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(self.library),
            "FAKETIME_TIMESTAMP_FILE": str(self.file),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }


class Process:
    """A child process whose output is collected by a reader thread, so it never blocks;
    ``open_files`` lowers its open-file limit (ulimit -n), ``pass_fds`` it inherits."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
        open_files: int | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        def limit() -> None:
            if open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

        self.popen = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
            preexec_fn=limit if open_files is not None else None,
            pass_fds=pass_fds,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            if self.popen.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"process exited early:\n{self.output}")
            return next((m for line in list(self.lines) if (m := regex.search(line))), None)

        return wait_until(found, timeout, f"output matching {pattern!r}")

    def stop(self, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait(5)
        self._reader.join(5)
        return code


class SimulatorProcess(Process):
    """``python -m exporter.simulator`` on a free loopback port."""

    def __init__(self, *args: str) -> None:
        super().__init__([sys.executable, "-m", "exporter.simulator", "--port", "0", *args])
        match = self.wait_for_line(r"simulator listening on (https?://\S+)")
        self.url = match.group(1)

    def state(self) -> dict:
        return requests.get(self.url + "/_sim/state", timeout=5).json()

    def change(self, **body: object) -> dict:
        return requests.post(self.url + "/_sim/inventory", json=body, timeout=5).json()

    def request_log(self) -> list[dict]:
        return requests.get(self.url + "/_sim/requests", timeout=5).json()


class ExporterProcess(Process):
    """The real ``beenergised-exporter`` console script, listening on a free loopback port
    (or on ``listen``)."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        scheme: str = "http",
        open_files: int | None = None,
        listen: str = "127.0.0.1:0",
    ) -> None:
        script = str(Path(sys.executable).with_name("beenergised-exporter"))
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("BEENERGISED_")}
        full_env |= env
        super().__init__(
            [script, f"--web.listen-address={listen}", "--log.level=debug", *args],
            full_env,
            open_files=open_files,
        )
        match = self.wait_for_line(r"listening on 127\.0\.0\.1:(\d+)")
        self.url = f"{scheme}://127.0.0.1:{match.group(1)}"

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return requests.get(self.url + path, timeout=5, **kwargs)


def proc_threads(pid: int) -> int:
    """The number of threads of process ``pid``, from /proc/<pid>/status."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE).group(1))


def proc_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds process ``pid`` has used, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class SlowHeads:
    """A crowd of ``count`` connections to 127.0.0.1:``port``, each sending one more byte of a
    request head that never ends every ``interval`` seconds (slowloris); a connection the
    server closes is opened again at its next turn. One thread, non-blocking sockets; runs
    until ``stop``, which is also its context manager's exit."""

    HEAD = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "

    def __init__(self, port: int, count: int, interval: float) -> None:
        self.port, self.count, self.interval = port, count, interval
        self.opened = 0  # connections opened
        self.reopened = 0  # of them, opened again because the server had closed the last
        self.sent = 0  # bytes sent
        self._socks: list[tuple[socket.socket, int] | None] = [None] * count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-heads", daemon=True)

    def __enter__(self) -> SlowHeads:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for entry in self._socks:
            if entry is not None:
                entry[0].close()

    def _open(self) -> tuple[socket.socket, int]:
        self.opened += 1
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", self.port))  # in progress; a full backlog retries the SYN
        return sock, 0

    def _closed_by_server(self, sock: socket.socket) -> bool:
        try:
            return sock.recv(1, socket.MSG_PEEK) is not None  # EOF (b"") or an answer
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _run(self) -> None:
        step = self.interval / self.count
        turn = 0
        while not self._stop.wait(step if turn >= self.count else 0.001):
            index = turn % self.count
            turn += 1
            entry = self._socks[index]
            if entry is None:
                self._socks[index] = self._open()
                continue
            sock, offset = entry
            if self._closed_by_server(sock):
                sock.close()
                self.reopened += 1
                self._socks[index] = self._open()
                continue
            byte = self.HEAD[offset : offset + 1] or b"a"
            try:
                self.sent += sock.send(byte)
            except BlockingIOError:  # still connecting, or waiting in the backlog
                continue
            except OSError:
                sock.close()
                self.reopened += 1
                self._socks[index] = self._open()
                continue
            self._socks[index] = (sock, offset + 1)


def private_ca(directory: Path) -> tuple[Path, Path]:
    """A new private CA in ``directory``: (its certificate, a certificate and key for
    127.0.0.1 in one PEM file), for a simulator serving HTTPS that nothing trusts by default."""
    import trustme  # a test dependency only

    ca = trustme.CA()
    ca_file, server_file = directory / "private-ca.pem", directory / "server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server_file))
    return ca_file, server_file


E2E_CLIENT = ("e2e-client", "e2e-Secret-7f3a9c")
"""The client id and secret the end-to-end tests give the simulator and the exporter."""


def value(metrics: dict, name: str, **labels: str) -> float | None:
    """The sample of ``name`` with exactly ``labels`` in the result of ``samples``, or None."""
    return metrics.get((name, frozenset(labels.items())))


def matching(metrics: dict, name: str) -> dict[frozenset, float]:
    """Every sample of ``name`` in the result of ``samples``, keyed by its label set."""
    return {labels: v for (n, labels), v in metrics.items() if n == name}


def scrape(exporter: ExporterProcess) -> dict[tuple[str, frozenset], float]:
    """The samples of one successful scrape of the exporter's /metrics."""
    response = exporter.get("/metrics")
    assert response.status_code == 200
    return samples(response.text)


def env_for(
    simulator: SimulatorProcess, client: tuple[str, str] = E2E_CLIENT, **settings: str
) -> dict[str, str]:
    """The environment that points the exporter at ``simulator`` with ``client`` (id, secret),
    and further ``BEENERGISED_*`` settings."""
    return {
        "BEENERGISED_API_URL": simulator.url,
        "BEENERGISED_TOKEN_URL": simulator.url + "/oauth2/token",
        "BEENERGISED_CLIENT_ID": client[0],
        "BEENERGISED_CLIENT_SECRET": client[1],
        **settings,
    }


def ipv6_loopback() -> bool:
    """Whether this machine can listen on ::1."""
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@dataclass
class FaultStack:
    """A simulator process and an exporter reading it as one mandant, driven through the
    simulator's fault API; the end-to-end fault tests build on it."""

    simulator: SimulatorProcess
    exporter: ExporterProcess
    mandant: str = "127.0.0.1"  # an exporter names the mandant after the API host

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        return samples(self.exporter.get("/metrics").text)

    def sample(self, name: str, **labels: str) -> float | None:
        """The mandant's sample ``name`` with ``labels``, or None when it is not exported."""
        return self.metrics().get((name, frozenset({"mandant": self.mandant, **labels}.items())))

    def value(self, name: str, **labels: str) -> float:
        """The mandant's sample, 0 when it is not exported."""
        return self.sample(name, **labels) or 0.0

    def successes(self) -> float:
        return self.value("beenergised_last_refresh_success_timestamp_seconds")

    def wait_healthy(self, fresh: bool = True) -> None:
        """Up and serving exactly the simulator's fleet (after a new successful refresh)."""
        if fresh:
            seen = self.successes()
            wait_until(lambda: self.successes() > seen, what="a fresh successful refresh")
        wait_until(
            lambda: (
                self.value("beenergised_up") == 1
                and self.value("beenergised_charging_stations")
                == self.simulator.state()["stations"]
            ),
            what="the exporter to serve the simulator's fleet",
        )

    def fault(self, **spec: object) -> None:
        response = requests.post(self.simulator.url + "/_sim/faults", json=spec, timeout=5)
        assert response.status_code == 200, response.text

    def clear(self) -> None:
        response = requests.delete(self.simulator.url + "/_sim/faults", timeout=5)
        assert response.status_code == 200, response.text

    def revoke_tokens(self) -> None:
        requests.post(self.simulator.url + "/_sim/revoke_tokens", timeout=5).raise_for_status()


def mandants_yaml(urls: dict[str, str], extra: dict[str, str] | None = None) -> str:
    """The ``mandants:`` list of a config file: a mandant per name and simulator URL, with
    the simulator's demo client, and ``extra`` YAML lines (indented) for some names."""
    return "mandants:\n" + "".join(
        f"  - name: {name}\n    api_url: {url}\n    token_url: {url}/oauth2/token\n"
        "    client_id: demo-client\n    client_secret: demo-secret\n" + (extra or {}).get(name, "")
        for name, url in urls.items()
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a server that must be started
    on a known port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(process: subprocess.Popen[bytes], log: Path) -> int:
    """The port an exporter writing its log to ``log`` listens on, once it says so (60 s)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text())
        if match:
            return int(match.group(1))
        time.sleep(0.1)
    raise SystemExit(f"the exporter did not start:\n{log.read_text()}")
