"""Logging set-up: structlog to stderr, human-readable on a terminal, JSON lines otherwise.

The level and format come from the command line (``espgw run --log-level/--log-format``), else the
configuration file's ``[gateway] log_level/log_format``, else the defaults (info, auto). The command
line is recorded once (:func:`set_command_line`) and :func:`configure_from_config` applies it over
whatever file is read, so the daemon's start and any later reload keep the flags.

The cores keep key material out of their events; :func:`redact_secrets` is the last line of
defence for anything that slips through under a secret-looking key name.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
FORMATS = ("auto", "console", "json")
REDACTED = "<redacted>"

# psk, secret, password, keymat, sk_ei/sk_ar/skeyseed..., and "key" as a whole word (enc_key,
# integ_key, keys) but not words that merely contain it ("monkey", "keyingtries").
_SECRET_KEY = re.compile(r"psk|secret|passw|keymat|skeyseed|^sk_|(^|_)keys?($|_)", re.IGNORECASE)


def is_secret_key(name: str) -> bool:
    return bool(_SECRET_KEY.search(name))


def _redact(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return value
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and is_secret_key(k) else _redact(v, depth + 1))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(item, depth + 1) for item in value)
    return value


def redact_secrets(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> dict:
    """structlog processor: replace any value whose key looks secret, also in nested dicts."""
    return {key: (REDACTED if key != "event" and is_secret_key(key) else _redact(value))
            for key, value in event_dict.items()}


# what `espgw run` was given on its command line; None: not given, the file decides
_command_line: dict[str, str | None] = {"level": None, "format": None}


def set_command_line(level: str | None = None, fmt: str | None = None) -> None:
    """Record the command line's logging flags, which win over every configuration file read later."""
    if level is not None and level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    _command_line.update(level=level, format=fmt)


def effective_settings(file_level: str | None, file_format: str | None) -> tuple[str, str]:
    """(level, format): the command line's flag, else the file's setting, else the default."""
    return (_command_line["level"] or file_level or "info", _command_line["format"] or file_format or "auto")


def configure_from_config(file_level: str | None, file_format: str | None, stream: TextIO | None = None) -> None:
    """Configure logging from a configuration file's settings, the command line's flags winning."""
    configure_logging(*effective_settings(file_level, file_format), stream=stream)


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog for the whole process; ``fmt`` is auto | console | json."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    stream = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if _is_terminal(stream) else "json"
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=_is_terminal(stream))
    else:
        renderer = structlog.processors.JSONRenderer(default=str)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
