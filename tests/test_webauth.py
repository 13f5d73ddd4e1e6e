"""Tests of the bcrypt queue's policy in exporter/webauth.py: who goes first, who is pushed out,
how long anyone waits and what is remembered of clients. No sleeps: each waiting client is a
thread that holds its turn until the test releases it."""

from __future__ import annotations

import base64
import threading

import bcrypt
import pytest

from exporter.webauth import BasicAuth, TooManyLogins, _FairQueue, _Waiter
from tests.helpers import wait_until

PASSWORD = b"right-Password-1"
HASH = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=4))


class Attempt:
    """A client asking ``queue`` for a turn in a thread of its own. Once it has the turn, it
    appends its name to ``served`` and holds the turn until ``release`` is set."""

    def __init__(self, queue: _FairQueue, client: str, served: list[str]) -> None:
        self.client = client
        self.release = threading.Event()
        self.refused: TooManyLogins | None = None
        self._finished = threading.Event()
        self._queue, self._served = queue, served
        threading.Thread(target=self._run, daemon=True).start()
        # in the queue (running or waiting), or refused
        wait_until(lambda: client in queue._clients or self._finished.is_set(), what=client)

    def _run(self) -> None:
        try:
            with self._queue.turn(self.client):
                self._served.append(self.client)
                assert self.release.wait(15), "the test never released the turn"
        except TooManyLogins as refused:
            self.refused = refused
        finally:
            self._finished.set()

    def finished(self) -> bool:
        return self._finished.wait(15)


def serve_all(attempts: list[Attempt], served: list[str]) -> list[str]:
    """Release each turn as it is taken until every attempt that got into the queue is done;
    the clients in the order they were served."""
    waiting = [a for a in attempts if a.refused is None]
    by_client = {a.client: a for a in waiting}
    for count in range(1, len(waiting) + 1):
        wait_until(lambda: len(served) >= count, what=f"turn {count}")  # noqa: B023
        by_client[served[-1]].release.set()
    assert all(a.finished() for a in waiting)
    return served


def waiting(queue: _FairQueue) -> list[str]:
    return [w.client for w in queue._first] + [w.client for w in queue._last]


def is_suspect(queue: _FairQueue, client: str) -> bool:
    """How ``queue`` sees ``client``: as a suspect (it sent a wrong password lately) or not,
    told by the refusal of a second check while its first runs."""
    with queue.turn(client), pytest.raises(TooManyLogins) as refused, queue.turn(client):
        pass
    assert str(refused.value) == f"{client} has a password check running or waiting"
    return refused.value.suspect


def test_clients_without_a_wrong_password_go_before_suspects_each_in_arrival_order():
    queue = _FairQueue()
    for client in ("s1", "s2"):
        queue.record(client, right=False)
    served: list[str] = []
    attempts = [Attempt(queue, c, served) for c in ("holder", "s1", "c1", "s2", "c2")]
    assert waiting(queue) == ["c1", "c2", "s1", "s2"]
    assert serve_all(attempts, served) == ["holder", "c1", "c2", "s1", "s2"]
    assert not queue._running and not queue._clients


def test_at_a_full_queue_a_newcomer_without_a_wrong_password_takes_the_last_suspects_place():
    queue = _FairQueue()
    queue.MAX_WAITING = 3
    for client in ("s1", "s2", "s3", "s4"):
        queue.record(client, right=False)
    served: list[str] = []
    attempts = [Attempt(queue, c, served) for c in ("holder", "s1", "s2", "s3")]
    attempts.append(Attempt(queue, "c1", served))
    assert attempts[3].finished() and attempts[3].refused is not None
    assert attempts[3].refused.suspect
    assert str(attempts[3].refused) == (
        "s3 sent a wrong password lately; made way for a client that did not"
    )
    assert waiting(queue) == ["c1", "s1", "s2"]
    for suspect in ("s4", "s3"):  # a suspect at a full queue, and the one pushed out, again
        with pytest.raises(TooManyLogins) as refused, queue.turn(suspect):
            pass
        assert refused.value.suspect
        assert str(refused.value) == "3 password checks are waiting"
    attempts += [Attempt(queue, c, served) for c in ("c2", "c3")]
    assert waiting(queue) == ["c1", "c2", "c3"]
    assert all(a.finished() and a.refused and a.refused.suspect for a in attempts[1:4])
    # full of clients without a wrong password: the newcomer is refused, however innocent
    with pytest.raises(TooManyLogins) as refused, queue.turn("c4"):
        pass
    assert not refused.value.suspect
    assert str(refused.value) == "3 password checks are waiting"
    assert serve_all(attempts, served) == ["holder", "c1", "c2", "c3"]
    assert not queue._running and not queue._clients


def test_nobody_waits_longer_than_max_wait_and_a_client_that_gave_up_leaves_no_trace():
    queue = _FairQueue()
    queue.MAX_WAIT = 0
    queue.record("s", right=False)
    with queue.turn("holder"):
        for client, suspect in (("c", False), ("s", True)):
            with pytest.raises(TooManyLogins) as refused, queue.turn(client):
                pass
            assert refused.value.suspect is suspect
            assert str(refused.value) == f"{client} waited 0 s for a password check"
        assert waiting(queue) == [] and queue._clients == {"holder"}
    assert not queue._running
    with queue.turn("c"):  # the turn is free at once
        assert queue._clients == {"c"}


def test_a_turn_given_just_as_the_wait_runs_out_is_taken():
    queue = _FairQueue()
    holder = queue.turn("holder")
    holder.__enter__()
    join = queue._join

    def join_and_run_out(client: str) -> _Waiter:
        waiter = join(client)

        def wait(timeout: float) -> bool:  # the holder finishes as the wait runs out
            holder.__exit__(None, None, None)
            return False

        waiter.turn.wait = wait
        return waiter

    queue._join = join_and_run_out
    with queue.turn("c"):
        assert queue._running and queue._clients == {"c"}
    assert not queue._running and not queue._clients


def test_a_client_whose_password_was_right_is_never_a_suspect():
    queue = _FairQueue()
    assert not is_suspect(queue, "a")
    queue.record("a", right=False)
    assert is_suspect(queue, "a")
    queue.record("a", right=True)
    assert not is_suspect(queue, "a")
    queue.record("a", right=False)
    assert not is_suspect(queue, "a")


def test_the_clients_remembered_are_bounded_and_the_least_recent_are_forgotten():
    queue = _FairQueue()
    queue.SUSPECTS, queue.TRUSTED = 3, 2
    for client in ("a", "b", "c", "d", "b", "e"):
        queue.record(client, right=False)
    assert [is_suspect(queue, c) for c in "abcde"] == [False, True, False, True, True]
    for client in ("x", "y", "z"):
        queue.record(client, right=True)
    for client in ("x", "y"):
        queue.record(client, right=False)
    assert is_suspect(queue, "x") and not is_suspect(queue, "y")  # x was forgotten as right
    assert len(queue._suspects) == 3 and len(queue._trusted) == 2


def basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode()


def test_a_wrong_password_makes_a_suspect_of_the_address_not_of_the_user():
    auth = BasicAuth({"alice": HASH})
    assert auth.check(basic(b"alice:wrong"), "192.0.2.1") is False
    assert auth.check(basic(b"mallory:" + PASSWORD), "2001:db8::1") is False  # no such user
    assert auth.check(basic(b"alice:" + PASSWORD), "192.0.2.9") is True
    assert auth.check(None, "192.0.2.2") is False  # no credentials: nothing checked
    queue = auth._queue
    assert is_suspect(queue, "192.0.2.1") and is_suspect(queue, "2001:db8::/64")
    assert not is_suspect(queue, "192.0.2.9") and not is_suspect(queue, "192.0.2.2")


def test_new_users_share_the_queue_so_bcrypt_runs_one_at_a_time_and_suspects_stay():
    old = BasicAuth({"alice": HASH})
    assert old.check(basic(b"alice:wrong"), "192.0.2.1") is False
    new = BasicAuth({"bob": HASH}, like=old)
    assert is_suspect(new._queue, "192.0.2.1")
    new._queue.MAX_WAIT = 0
    with old._queue.turn("192.0.2.7"), pytest.raises(TooManyLogins) as refused:
        new.check(basic(b"bob:" + PASSWORD), "192.0.2.9")
    assert str(refused.value) == "192.0.2.9 waited 0 s for a password check"
    assert new.check(basic(b"bob:" + PASSWORD), "192.0.2.9") is True
