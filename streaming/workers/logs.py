"""JSON log lines for the stream workers: one object per line, structured fields as keys.

Log shippers parse them without a grok pattern; every worker module logs through `log_event`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from streaming.settings import LoopSettings, load


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log shippers parse without a grok pattern."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str | None = None) -> None:
    """JSON lines on stderr at LOG_LEVEL; the HTTP clients' per-request lines left out."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level or load(LoopSettings).log_level, handlers=[handler])
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log a message with structured fields (they become top-level JSON keys)."""
    logger.log(level, msg, extra={"fields": fields})
