"""Logging set-up for the ``headwater`` process: readable lines by default, or JSON lines.

Owns the root logger's handler and the levels of third-party loggers. amqtt logs a line per
connection at INFO and, on a failed start, a traceback for errors Headwater already reports in
one line; both are tamed here. Nothing in Headwater logs per message on the hot path.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal

__all__ = ["LogFormat", "setup_logging"]

LogFormat = Literal["text", "json"]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _NoTracebackForReportedErrors(logging.Filter):
    """amqtt logs 'Broker startup failed' with a traceback; Headwater reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "amqtt.broker" and record.getMessage() == "Broker startup failed")


def setup_logging(*, log_format: LogFormat = "text", level: str = "INFO") -> None:
    """Send every log line to stderr as text or JSON; quiet third-party INFO chatter."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S"
            )
        )
    handler.addFilter(_NoTracebackForReportedErrors())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # amqtt logs every connection and listener at INFO; keep its warnings and errors only.
    for name in ("amqtt", "transitions", "websockets", "botocore", "urllib3"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
