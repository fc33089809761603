"""klog-style log lines and the -v / -vmodule mapping."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator

import pytest

from pyflannel.log import KlogFormatter, setup_logging

LINE = re.compile(
    r"^(?P<level>[IWEF])(?P<mmdd>\d{4}) (?P<time>\d\d:\d\d:\d\d\.\d{6}) (?P<pid>[ \d]{7}) "
    r"(?P<file>[\w.]+):(?P<line>\d+)\] (?P<msg>.*)$"
)


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)


def _emit(verbosity: int, vmodule: str = "") -> list[str]:
    buf = io.StringIO()
    setup_logging(verbosity, vmodule, stream=buf)
    log = logging.getLogger("pyflannel.test")
    log.debug("debug %d", 1)
    log.info("info %s", "x")
    log.warning("warn")
    log.error("error")
    log.critical("fatal")
    return buf.getvalue().splitlines()


def test_line_format(restore_root: None) -> None:
    lines = _emit(0)
    assert len(lines) == 4
    for line, (level, msg) in zip(lines, [("I", "info x"), ("W", "warn"), ("E", "error"), ("F", "fatal")]):
        m = LINE.match(line)
        assert m, line
        assert m["level"] == level and m["msg"] == msg
        assert m["file"] == "test_log.py"
        assert int(m["pid"]) == os.getpid()
        assert m["pid"] == f"{os.getpid():7d}"


def test_verbosity_one_shows_debug(restore_root: None) -> None:
    lines = _emit(1)
    assert len(lines) == 5
    m = LINE.match(lines[0])
    assert m and m["level"] == "I" and m["msg"] == "debug 1"


def test_vmodule_selects_file(restore_root: None) -> None:
    assert len(_emit(0, "test_lo*=2")) == 5
    assert len(_emit(0, "other=2")) == 4
    assert len(_emit(0, "test_log=0")) == 4


def test_setup_twice_does_not_duplicate(restore_root: None) -> None:
    setup_logging(0, stream=io.StringIO())
    buf = io.StringIO()
    setup_logging(0, stream=buf)
    logging.getLogger("pyflannel.x").info("once")
    assert len(buf.getvalue().splitlines()) == 1


def test_noisy_loggers_quieted(restore_root: None) -> None:
    setup_logging(3, stream=io.StringIO())
    assert logging.getLogger("grpc").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("etcd3aio").getEffectiveLevel() == logging.WARNING


def test_exception_follows_header() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord(
            "x", logging.ERROR, "/a/b/mod.py", 7, "failed", None, __import__("sys").exc_info()
        )
    text = KlogFormatter().format(record)
    first, *rest = text.splitlines()
    m = LINE.match(first)
    assert m and m["file"] == "mod.py" and m["line"] == "7" and m["msg"] == "failed"
    assert "RuntimeError: boom" in rest[-1]


def test_timestamp_fields() -> None:
    record = logging.LogRecord("x", logging.INFO, "f.py", 1, "m", None, None)
    record.created = 1_700_000_000.123456
    m = LINE.match(KlogFormatter().format(record))
    assert m
    import time

    t = time.localtime(record.created)
    assert m["mmdd"] == f"{t.tm_mon:02d}{t.tm_mday:02d}"
    assert m["time"].endswith(".123456") or m["time"].endswith(".123455")
