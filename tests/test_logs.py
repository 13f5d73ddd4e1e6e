import json
import logging

from exporter.logs import JsonFormatter, LogfmtFormatter, setup_logging


def record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("exporter.refresh", level, __file__, 1, message, (), None)


def test_logfmt_quotes_and_escapes_values():
    line = LogfmtFormatter().format(record('mandant north: "bad"\nanswer'))
    assert " level=info source=exporter.refresh " in line
    assert line.endswith('msg="mandant north: \\"bad\\"\\nanswer"')
    assert "\n" not in line


def test_warnings_are_called_warn_like_the_go_exporters():
    assert "level=warn" in LogfmtFormatter().format(record("x", logging.WARNING))


def test_json_lines_carry_the_same_keys():
    line = JsonFormatter().format(record("hello"))
    assert set(json.loads(line)) == {"ts", "level", "source", "msg"}


def test_debug_level_keeps_urllib3_request_lines_out(restore_logging):
    setup_logging("debug", "logfmt")
    assert logging.getLogger().level == logging.DEBUG
    assert not logging.getLogger("urllib3.connectionpool").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("apscheduler.executors.default").isEnabledFor(logging.INFO)
