"""Keeping credentials out of everything the program prints or writes.

A credential can reach a message from the environment (``AWS_SECRET_ACCESS_KEY``, a session token,
the access key id), from a URL's user-info (``http://KEY:SECRET@host``) or from a file a user
wrote. :func:`redact` replaces each with ``***``: the CLI passes every message, log record and
traceback through it, and URLs written into outputs carry no user-info (:func:`url_userinfo`).
"""

from __future__ import annotations

import logging
import os
import re

MASK = "***"
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|ACCESS_KEY|CREDENTIAL|API_KEY")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<info>[^/?#@\s'\"]+)@")
MIN_SECRET_LENGTH = 6  # shorter values (flags like "1", "true") would mask ordinary text


def _secret_values() -> list[str]:
    values = {
        v
        for k, v in os.environ.items()
        if _SECRET_NAME.search(k.upper()) and len(v) >= MIN_SECRET_LENGTH
    }
    return sorted(values, key=len, reverse=True)  # a longer secret first: it may hold a shorter


def url_userinfo(url: str) -> bool:
    """Whether ``url`` carries user-info (``scheme://user[:password]@host``)."""
    return bool(_USERINFO.search(url))


def check_endpoint(url: str) -> None:
    """Refuse an endpoint URL that carries credentials: they would end up in ``job.yaml``,
    logs and messages; boto3 takes them from the environment or an AWS profile."""
    if url_userinfo(url):
        raise ValueError(
            f"endpoint URL {redact(url)!r} carries credentials (user:password@); give them as "
            f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an AWS profile instead"
        )


def redact(text: str) -> str:
    """``text`` with URL user-info and the values of secret environment variables masked."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    for value in _secret_values():
        text = text.replace(value, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A handler filter that redacts each record's final message (arguments included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if clean != message:
            record.msg, record.args = clean, None
        return True
