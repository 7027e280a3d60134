"""Structured logs for the live runtime: one JSON object per line on stderr.

Rules kept here:
- Every record carries `ts`, `level`, `component` and `msg`; extra fields come from
  `log.info("...", extra={"fields": {...}})` and are merged in.
- Nothing secret is logged: callers pass URLs through `redact_url` and never pass source
  headers; this module also drops any field whose name looks like a credential.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from urllib.parse import urlsplit, urlunsplit

_SECRET_NAMES = ("authorization", "cookie", "token", "password", "secret", "headers")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "component": record.name,
            "msg": record.getMessage(),
        }
        for key, value in (getattr(record, "fields", None) or {}).items():
            if not any(s in key.lower() for s in _SECRET_NAMES):
                out[key] = value
        if record.exc_info and record.levelno >= logging.ERROR:
            out["error"] = " ".join(self.formatException(record.exc_info).splitlines()[-1:])
        return json.dumps(out, default=str)


def setup(level: str = "info") -> None:
    """Route every `dfnet` logger to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("dfnet")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def redact_url(url: str) -> str:
    """The URL without userinfo and query string: query parameters often carry signatures."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<bad url>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def now() -> float:
    """Monotonic seconds: the `now` every core state machine is fed."""
    return time.monotonic()
