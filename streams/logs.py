"""The worker's log output: text or JSON lines, never a secret, never a record's contents.

:func:`install` puts two things on every handler of a logger (the root logger by default,
which recstream's, Faust's and aiokafka's loggers all reach):

* :class:`Redactor`, a filter that rewrites each record before any handler formats it:
  values of secret settings (``sasl_password``, ``ssl_*`` keys and passwords, tokens...)
  become ``***`` wherever they appear (``name=value``, ``name: value``, extra fields);
  the ``text`` field of a record (review texts) is masked the same way; and raw record
  bytes passed as log arguments (aiokafka's debug log of every record it sends, which
  would include dead letters and their original values) are replaced by their length;
* with ``fmt="json"``, :class:`JsonFormatter`: one JSON object per line, ``ts`` (UTC,
  ISO 8601), ``level``, ``logger``, ``message``, the record's extra fields, and ``exc``
  (the traceback) when there is one.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from typing import Any

import orjson

LOG_FORMATS = ("text", "json")
MASK = "***"

#: Setting names whose values are secrets (matched anywhere in a name, case-insensitive).
SECRET_NAME = re.compile(r"password|passwd|secret|token|credential|api_?key|private_?key|ssl_?key|sasl_plain|sasl_oauth|keyfile", re.IGNORECASE)
_SECRET_ASSIGNMENT = re.compile(
    r"""(?P<name>["']?\b[A-Za-z0-9_.-]*(?:password|passwd|secret|token|credential|api_?key|private_?key|ssl_?key|keyfile)[A-Za-z0-9_]*["']?)"""
    r"""(?P<sep>\s*[=:]\s*)"""
    r"""(?P<value>b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*"|[^\s,;)}\]]+)""",
    re.IGNORECASE,
)
# the ``text`` field of a record: JSON ("text": "..."), escaped JSON inside JSON
# (\"text\":\"...\"), a dataclass repr (text='...') or a dict repr ('text': '...')
_TEXT_FIELD = re.compile(
    r"""(?P<name>\\?["']text\\?["']\s*:\s*|\btext=)"""
    r"""(?P<value>\\"(?:[^\\]|\\(?!")|\\\\)*?\\"|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
)
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def redact(text: str) -> str:
    """``text`` with secret values and record texts masked."""
    if not text:
        return text
    text = _SECRET_ASSIGNMENT.sub(lambda m: f"{m['name']}{m['sep']}{MASK}", text)
    return _TEXT_FIELD.sub(lambda m: f"{m['name']}{MASK}", text)


def _safe_arg(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    return value


class Redactor(logging.Filter):
    """Mask secrets and record contents in a log record (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_recstream_redacted", False):
            return True
        args = record.args
        if isinstance(args, tuple):
            args = tuple(_safe_arg(a) for a in args)
        elif isinstance(args, dict):
            args = {k: (MASK if SECRET_NAME.search(str(k)) else _safe_arg(v)) for k, v in args.items()}
        record.args = args
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep it for logging's own error report
            return True
        # args () rather than None: mode's formatter turns None into (None,) and formats again
        record.msg, record.args = redact(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        for name in set(vars(record)) - _STANDARD_ATTRS:
            value = getattr(record, name)
            if SECRET_NAME.search(name):
                setattr(record, name, MASK)
            elif name == "text":
                setattr(record, name, MASK)
            elif isinstance(value, str):
                setattr(record, name, redact(value))
            elif isinstance(value, (bytes, bytearray, memoryview)):
                setattr(record, name, _safe_arg(value))
        record._recstream_redacted = True
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRS and not name.startswith("_") and name not in doc:
                doc[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode()


def install(fmt: str = "text", logger: logging.Logger | None = None) -> None:
    """Redact on every handler of ``logger`` (default: root); with ``fmt="json"`` also
    format JSON lines. Idempotent; call again after something replaces the handlers."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(f, Redactor) for f in handler.filters):
            handler.addFilter(Redactor())
        if fmt == "json" and not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(JsonFormatter())
