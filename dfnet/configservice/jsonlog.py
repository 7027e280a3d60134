"""Structured logs: one JSON object per line on stderr.

Owns the record format every config-service log line has: ``ts`` (UTC, ISO 8601 with
milliseconds), ``level``, ``component`` (the logger's name), ``msg``, then the record's own
fields, given as ``log.info("msg", extra={"fields": {...}})``. An exception goes into
``error`` (one line) and ``traceback`` (one JSON string), so a line is always one line.

The supernode and daemon want the same format; this module is small enough to move to
``dfnet`` as their shared logging setup when they arrive.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

__all__ = ["JsonFormatter", "setup_json_logging"]

_CORE_KEYS = ("ts", "level", "component", "msg")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=timezone.utc)
        out: dict = {
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "component": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in _CORE_KEYS})
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            out["error"] = " ".join(f"{type(error).__name__}: {error}".split())
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def setup_json_logging(level: int = logging.INFO, stream=None) -> None:
    """Send every log record of this process to `stream` (stderr) as one JSON line."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
