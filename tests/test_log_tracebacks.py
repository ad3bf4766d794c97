"""Logged exceptions carry their traceback and never the frames' local variables, in JSON and on the console."""

from __future__ import annotations

import io
import json
import logging
import re
import secrets

import pytest

from templ_pipeline import telemetry
from templ_pipeline.telemetry.logs import configure_logging, get_logger

pytestmark = pytest.mark.fast


class TerminalStream(io.StringIO):
    """A stream that says it is a terminal, so the console renderer takes its colour path."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def reset():
    yield
    telemetry.testing.reset()


def _connect(password: str) -> None:
    api_key = "sk-live-" + password  # a local that must not reach the log
    raise ConnectionError(f"authentication refused ({len(api_key)} chars)")


def _log_failures(secret: str) -> None:
    try:
        _connect(secret)
    except ConnectionError:
        get_logger("templ.test").exception("upload.failed")
    try:
        _connect(secret)
    except ConnectionError:
        logging.getLogger("templ.stdlib").error("stdlib.failed", exc_info=True)


def test_json_traceback_has_frames_and_no_locals(reset):
    secret = secrets.token_hex(16)  # made at run time: in no source line a traceback could quote
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream, run_id="tb")
    _log_failures(secret)
    text = stream.getvalue()
    assert secret not in text
    events = [json.loads(line) for line in text.splitlines()]
    assert [e["event"] for e in events] == ["upload.failed", "stdlib.failed"]
    for event in events:
        (exception,) = event["exception"]
        assert exception["exc_type"] == "ConnectionError"
        assert "authentication refused" in exception["exc_value"]
        assert [frame["name"] for frame in exception["frames"]][-1] == "_connect"
        assert all("locals" not in frame for frame in exception["frames"])


@pytest.mark.parametrize("stream_type", [io.StringIO, TerminalStream], ids=["plain", "terminal"])
def test_console_traceback_has_frames_and_no_locals(reset, stream_type):
    secret = secrets.token_hex(16)
    stream = stream_type()
    configure_logging(fmt="console", stream=stream, run_id="tb")
    _log_failures(secret)
    text = re.sub(r"\x1b\[[0-9;]*m", "", stream.getvalue())  # colour codes, on the terminal
    assert secret not in text
    assert text.count("Traceback") == 2 and text.count("ConnectionError: authentication refused") == 2
    assert "_connect" in text and "upload.failed" in text and "stdlib.failed" in text
