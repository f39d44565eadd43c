"""One log format for every Vestnik process (and uvicorn's lines in it), with secrets redacted.

Text by default (`2026-12-04T21:00:00.123Z INFO vestnik.center: msg notice_id=...`) or,
with VESTNIK_LOG_FORMAT=json, one JSON object per line (`ts`, `level`, `logger`, `msg`,
then context fields such as `notice_id`, `alert`, `user`, and `exc`, a traceback as one
string). Context fields come from a call's `extra={...}` and from `context(...)`, a
context manager whose fields every record logged inside it carries (the wrapper's
`alert`). Redaction happens in the formatter, on the finished text, so no handler or
library can route a secret around it.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import msgspec

from vestnik.streams.config import ConfigError

Format = Literal["text", "json"]
MASK = "***"
MIN_SECRET = 4  # a configured secret shorter than this is not searched for (it would mask words)

_NONE: Mapping[str, object] = MappingProxyType({})
_context: ContextVar[Mapping[str, object]] = ContextVar("vestnik_log_context", default=_NONE)
# attributes every LogRecord has: anything else on a record came from `extra=`
# (and uvicorn's `color_message`, the same message with terminal colours)
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName",
                                                          "color_message"}

# what looks like a secret wherever it appears: a URL's user:password@, a `password=`,
# `Bearer <token>`, a JWT, a `token=` query parameter, a Telegram bot token in a path
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]*@", re.I), rf"\g<1>{MASK}@"),
    (re.compile(r"(password=)[^&\s'\"]+", re.I), rf"\g<1>{MASK}"),
    (re.compile(r"\b(Bearer\s+)[^\s'\",]+", re.I), rf"\g<1>{MASK}"),
    (re.compile(r"\beyJ[\w-]*\.[\w-]+\.[\w-]*"), MASK),
    (re.compile(r"(token=)[^&\s'\"]+", re.I), rf"\g<1>{MASK}"),
    (re.compile(r"\bbot\d+:[\w-]+"), f"bot{MASK}"),
)
_secrets: list[str] = []  # configured values, longest first (one may contain another)


def add_secrets(values: Iterable[str | None]) -> None:
    """Mask these exact values in every line from now on (VESTNIK_SECRET, tokens, ...)."""
    found = {v for v in values if v and len(v) >= MIN_SECRET} | set(_secrets)
    _secrets[:] = sorted(found, key=len, reverse=True)


def url_secrets(url: str | None) -> list[str]:
    """The password (and user) in a URL, raw and percent-decoded: both can reach a log."""
    if not url:
        return []
    try:
        u = urlsplit(url)
        parts = [u.password, u.username]
    except ValueError:
        return []
    return [p for raw in parts if raw for p in (raw, unquote(raw))]


def config_secrets(config: Any) -> list[str]:
    """Every secret a streams.config.Config holds (duck-typed: the wrapper has no Config)."""
    out: list[str] = []
    for name in ("secret", "telegram_token", "slack_token", "slack_webhook_url",
                 "webhook_secret"):
        value = getattr(config, name, None)
        if value:
            out.append(value)
    out += getattr(config, "service_tokens", None) or []
    for name in ("redis_url", "smtp_url"):
        out += url_secrets(getattr(config, name, None))
    return out


def redact(text: str) -> str:
    """`text` with every configured secret and anything that looks like one masked."""
    for value in _secrets:
        if value in text:
            text = text.replace(value, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


@contextmanager
def context(**fields: object) -> Iterator[None]:
    """Every record logged inside (in this task and tasks it starts) carries `fields`."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def fields_of(record: logging.LogRecord) -> dict[str, object]:
    """The record's context fields: the active `context(...)`, then its own `extra=`."""
    out = dict(_context.get())
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_"):
            out[key] = value
    return out


def timestamp(created: float) -> str:
    """RFC 3339, UTC, milliseconds: `2026-12-04T21:00:00.123Z`."""
    ms = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{ms:03d}Z"


_TEXT_PLAIN = re.compile(r"^[^\s\"=]*\Z")


def _text_value(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if _TEXT_PLAIN.match(text) and text else msgspec.json.encode(text).decode()


class TextFormatter(logging.Formatter):
    """`<ts> <LEVEL> <logger>: <msg> key=value ...`, a traceback on the lines below."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{timestamp(record.created)} {record.levelname} {record.name}: " \
               f"{record.getMessage()}"
        fields = fields_of(record)
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        exc = _exc_text(self, record)
        if exc:
            line += "\n" + exc
        return redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, context fields, `exc`."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "ts": timestamp(record.created), "level": record.levelname,
            "logger": record.name, "msg": redact(record.getMessage()),
        }
        for key, value in fields_of(record).items():
            if key not in obj:
                obj[key] = _json_value(value)
        exc = _exc_text(self, record)
        if exc:
            obj["exc"] = redact(exc)
        return msgspec.json.encode(obj).decode()


def _json_value(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


def _exc_text(fmt: logging.Formatter, record: logging.LogRecord) -> str:
    parts = []
    if record.exc_info:
        parts.append(fmt.formatException(record.exc_info))
    if record.stack_info:
        parts.append(fmt.formatStack(record.stack_info))
    return "\n".join(parts)


# uvicorn configures these itself unless told not to (make_server passes log_config=None);
# whatever handlers they got, their records go to ours
_LIBRARY_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "arq", "arq.worker")


def setup(level: str = "info", fmt: Format = "text", *,
          secrets: Iterable[str | None] = ()) -> logging.Handler:
    """Log every record of this process to stderr in `fmt`, at `level` and above."""
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ConfigError(f"VESTNIK_LOG_LEVEL: {level!r} is not one of debug, info, warning, "
                          "error, critical")
    add_secrets(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(number)
    for name in _LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return handler
