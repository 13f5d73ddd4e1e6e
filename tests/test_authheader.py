"""Tests of exporter/authheader.py: the forms of the Authorization header and the choice."""

from __future__ import annotations

import threading

import pytest

from exporter.authheader import HeaderForm, header_value, shown

LOGGER = "exporter.authheader"


def test_the_two_forms_of_the_header() -> None:
    assert header_value("bearer", "abc") == "Bearer abc"
    assert header_value("raw", "abc") == "abc"
    assert shown("bearer") == "Authorization: Bearer <token>"
    assert shown("raw") == "Authorization: <token>"


@pytest.mark.parametrize(
    ("setting", "first", "other_of_bearer", "other_of_raw"),
    [
        ("auto", "bearer", "raw", "bearer"),
        ("bearer", "bearer", None, None),
        ("raw", "raw", None, None),
    ],
)
def test_auto_starts_with_bearer_and_only_auto_has_another_form(
    setting: str, first: str, other_of_bearer: str | None, other_of_raw: str | None
) -> None:
    header = HeaderForm(setting, "north")
    assert header.form == first
    assert header.accepted is None
    assert header.other("bearer") == other_of_bearer
    assert header.other("raw") == other_of_raw


def test_auto_keeps_the_form_that_works_and_logs_it_once(caplog: pytest.LogCaptureFixture) -> None:
    header = HeaderForm("auto", "north")
    with caplog.at_level("INFO", logger=LOGGER):
        for _ in range(5):
            header.works("raw")
    assert (header.form, header.accepted) == ("raw", "raw")
    assert [r.getMessage() for r in caplog.records] == [
        "mandant north: the API accepts the access token as Authorization: <token> "
        "(--api.authorization=auto); sending that form from now on"
    ]
    assert all(r.levelname == "INFO" for r in caplog.records)


def test_auto_logs_again_only_when_the_form_changes(caplog: pytest.LogCaptureFixture) -> None:
    header = HeaderForm("auto", "north")
    with caplog.at_level("INFO", logger=LOGGER):
        header.works("bearer")
        header.works("bearer")
        header.works("raw")
        header.works("raw")
    assert header.form == "raw"
    assert [r.getMessage() for r in caplog.records] == [
        "mandant north: the API accepts the access token as Authorization: Bearer <token> "
        "(--api.authorization=auto); sending that form from now on",
        "mandant north: the API no longer accepts the access token as Authorization: Bearer "
        "<token> but as Authorization: <token> (--api.authorization=auto); sending that form "
        "from now on",
    ]


def test_a_form_set_is_recorded_but_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    header = HeaderForm("raw", "north")
    with caplog.at_level("DEBUG", logger=LOGGER):
        header.works("raw")
    assert header.accepted == "raw"
    assert caplog.records == []


def test_many_threads_finding_the_form_at_once_log_it_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    header = HeaderForm("auto", "north")
    start = threading.Barrier(8)

    def find() -> None:
        start.wait(timeout=5)
        header.works("raw")

    with caplog.at_level("INFO", logger=LOGGER):
        threads = [threading.Thread(target=find) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=5)
    assert header.form == "raw"
    assert len(caplog.records) == 1
