"""Logging set-up shared by every agent: one line per event, key=value context, no secrets."""

from __future__ import annotations

import logging
import re
import sys

_SECRET = re.compile(r"(?i)(password|passwd|secret)(\s*[=:]\s*|\s+)('[^']*'|\"[^\"]*\"|\S+)")


class RedactingFormatter(logging.Formatter):
    """Formats records and blanks anything that looks like ``password=...``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return _SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


def redact(text: str) -> str:
    return _SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


def setup(component: str, level: str = "info") -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        RedactingFormatter(f"%(asctime)s %(levelname)s {component} %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return logging.getLogger(f"pgha.{component}")
