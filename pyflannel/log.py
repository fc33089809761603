"""klog-style logging on stderr, like flanneld (``-logtostderr`` is forced on in flannel).

Line format (klog header)::

    I1125 22:16:20.123456    4242 module.py:42] message

level letter, month+day, local time with microseconds, pid right-aligned in 7 columns,
``file:line`` of the call, ``] `` and the message.

Level mapping: ``E`` for ERROR, ``W`` for WARNING, ``F`` for CRITICAL, ``I`` for INFO and DEBUG.
klog's ``V(n).Info`` lines correspond to our DEBUG records: INFO is always shown; DEBUG is shown when
``-v`` >= 1, or for files selected by ``-vmodule`` (``pattern=N`` with N >= 1, the pattern matched
with ``fnmatch`` against the file name without ``.py``, as klog does for ``.go`` files).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import sys
import time
from typing import TextIO

_LETTERS = {
    logging.DEBUG: "I",
    logging.INFO: "I",
    logging.WARNING: "W",
    logging.ERROR: "E",
    logging.CRITICAL: "F",
}

NOISY_LOGGERS = ("grpc", "etcd3aio", "asyncio")


class KlogFormatter(logging.Formatter):
    """Formats records with the klog header; exceptions follow on the next lines."""

    def format(self, record: logging.LogRecord) -> str:
        letter = _LETTERS.get(record.levelno)
        if letter is None:
            letter = (
                "I"
                if record.levelno < logging.WARNING
                else (
                    "W"
                    if record.levelno < logging.ERROR
                    else ("E" if record.levelno < logging.CRITICAL else "F")
                )
            )
        t = time.localtime(record.created)
        micros = int((record.created - int(record.created)) * 1_000_000)
        header = (
            f"{letter}{t.tm_mon:02d}{t.tm_mday:02d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
            f".{micros:06d} {record.process if record.process is not None else os.getpid():7d} "
            f"{record.filename}:{record.lineno}] "
        )
        text = header + record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


def _parse_vmodule(vmodule: str) -> list[tuple[str, int]]:
    """``pattern=N,...`` into (pattern, level) pairs; malformed parts are skipped (flags validate)."""
    out: list[tuple[str, int]] = []
    for part in vmodule.split(","):
        pattern, sep, level = part.partition("=")
        if not sep or not pattern:
            continue
        try:
            n = int(level)
        except ValueError:
            continue
        if n > 0:
            out.append((pattern, n))
    return out


class VerbosityFilter(logging.Filter):
    """Drops DEBUG records unless ``-v`` >= 1 or ``-vmodule`` selects the record's file."""

    def __init__(self, verbosity: int, vmodule: str = "") -> None:
        super().__init__()
        self.verbosity = verbosity
        self.modules = _parse_vmodule(vmodule)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.INFO or self.verbosity >= 1:
            return True
        stem = record.filename.removesuffix(".py")
        return any(fnmatch.fnmatchcase(stem, pattern) for pattern, _ in self.modules)


_HANDLER_ATTR = "_pyflannel_klog"


def setup_logging(verbosity: int, vmodule: str = "", stream: TextIO | None = None) -> None:
    """Configure the root logger: klog lines on stderr (or ``stream``), verbosity as documented above.

    Calling it again replaces the handler installed by a previous call.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_ATTR, False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    setattr(handler, _HANDLER_ATTR, True)
    handler.setFormatter(KlogFormatter())
    handler.addFilter(VerbosityFilter(verbosity, vmodule))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity >= 1 or _parse_vmodule(vmodule) else logging.INFO)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
