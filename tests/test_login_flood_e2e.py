"""A wrong-password flood from 40 addresses while a right user logs in, end to end.

The real exporter (``--demo``) with basic auth; the hostile party is a crowd of scrapers, one
per loopback address 127.0.0.2 to 127.0.0.41, each sending wrong passwords without pause (for
the right users' names and for unknown ones). Meanwhile a right user scrapes 20 times from
127.0.0.1, each time as another user of the web config, so no login is ever cached and every
one needs its own bcrypt turn. Then the users change (SIGHUP), and the right user scrapes 20
times more as the new users.
"""

from __future__ import annotations

import base64
import http.client
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest

from exporter.refused import RefusedRequests
from tests.helpers import ExporterProcess, matching, samples, wait_until

pytestmark = pytest.mark.e2e

COST = 7  # 8 ms a check on an idle 2-core machine (the README suggests 10: 60 ms), so quick;
# the queue stays full all the same: the test waits for refusals before it logs in
PASSWORD = "flood-Right-1"
FLOODERS = [f"127.0.0.{n}" for n in range(2, 42)]
SCRAPES = 20
SCRAPE_TIMEOUT = 10.0  # Prometheus' default scrape_timeout


def login(port: int, source: str, user: str, password: str) -> int:
    """The status of GET /metrics as ``user``, sent from the loopback address ``source``;
    0 when no answer came within the scrape timeout."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=SCRAPE_TIMEOUT, source_address=(source, 0)
    )
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        connection.request("GET", "/metrics", headers={"Authorization": f"Basic {token}"})
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        connection.close()


def write_users(path: Path, users: list[str], hashed: str) -> None:
    path.write_text("basic_auth_users:\n" + "".join(f"  {user}: {hashed}\n" for user in users))


def test_a_right_user_gets_through_a_wrong_password_flood_from_40_addresses(
    tmp_path: Path, exporter_process: Callable[..., ExporterProcess]
):
    """20 logins at the start, then a user change (SIGHUP) and 20 logins as the new users."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=COST)).decode()
    users = [f"scraper{i}" for i in range(SCRAPES)]
    renamed = [f"renamed{i}" for i in range(SCRAPES + 1)]  # the last reads the counters
    web = tmp_path / "web.yml"
    write_users(web, users, hashed)
    exporter = exporter_process(["--demo", f"--web.config.file={web}"], {})
    port = int(exporter.url.rsplit(":", 1)[1])
    stop = threading.Event()
    answers: dict[str, list[int]] = {source: [] for source in FLOODERS}  # statuses in order

    def flood(source: str) -> None:
        for attempt in range(100_000):
            if stop.is_set():
                return
            # the right users' names with wrong passwords, and unknown names
            user = users[attempt % SCRAPES] if attempt % 2 else f"nobody{attempt}"
            answers[source].append(login(port, source, user, f"wrong-{attempt}"))

    def total(status: int) -> int:
        return sum(statuses.count(status) for statuses in list(answers.values()))

    def scrape_as(names: list[str]) -> list[int]:
        """The right user's statuses, logging in as each of ``names``; the flood goes on."""
        checked, refused = total(401), total(429)
        statuses = [login(port, "127.0.0.1", name, PASSWORD) for name in names]
        assert total(401) > checked and total(429) > refused
        return statuses

    threads = [threading.Thread(target=flood, args=(s,), daemon=True) for s in FLOODERS]
    try:
        for thread in threads:
            thread.start()
        # Every address has had a wrong password checked, and the queue is full: some are refused.
        wait_until(
            lambda: all(401 in answers[s] for s in FLOODERS) and total(429) >= len(FLOODERS),
            what="every flooding address to be answered 401 and the queue to overflow",
        )
        right = scrape_as(users)
        # A user change: all new users, not cached. The flooding addresses stay suspects.
        write_users(web, renamed, hashed)
        seen = len(exporter.lines)
        exporter.popen.send_signal(signal.SIGHUP)
        exporter.wait_for_line(r"configuration reloaded")
        assert seen < len(exporter.lines)
        refused = total(429)
        wait_until(lambda: total(429) >= refused + len(FLOODERS), what="the queue to overflow")
        right += scrape_as(renamed[:SCRAPES])
    finally:
        stop.set()
        for thread in threads:
            if thread.ident is not None:
                thread.join(SCRAPE_TIMEOUT + 5)
    for phase, statuses in (("at the start", right[:SCRAPES]), ("after", right[SCRAPES:])):
        assert statuses.count(200) >= SCRAPES // 2, (
            f"{phase}: {statuses.count(200)} of {SCRAPES} through: {statuses}"
        )
    assert set(right) <= {200, 429}, right
    assert {status for statuses in answers.values() for status in statuses} <= {401, 429}
    response = exporter.get("/metrics", auth=(renamed[SCRAPES], PASSWORD))
    assert response.status_code == 200
    refusals = matching(samples(response.text), "beenergised_web_requests_refused_total")
    # An address is a suspect from its first wrong password on, also after the user change;
    # the right user never is.
    before = sum(statuses[: statuses.index(401)].count(429) for statuses in answers.values())
    logins = {
        "unauthorized": total(401),
        "too_many_logins": before + right.count(429),
        "recent_wrong_password": total(429) - before,
    }
    # and none by the web server's limits (too_many_requests, ...): 41 clients are no crowd
    expected = {reason: logins.get(reason, 0) for reason in RefusedRequests.REASONS}
    assert refusals == {frozenset({("reason", r)}): n for r, n in expected.items()}
    assert "Traceback" not in exporter.output
