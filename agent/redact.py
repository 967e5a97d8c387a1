"""Keep secrets out of logs, status output and MQTT payloads.

RTSP URLs carry ``user:password@``; the password must never leave the process. Every
place that prints or publishes a URL goes through :func:`redact_url`, and a logging
filter scrubs URL credentials and registered secret values from every log record as a
second line of defence.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import quote, urlsplit, urlunsplit

MASK = "***"

# scheme://user:password@  (password may contain anything but '@' and whitespace)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@\s]*@")

_secrets_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Remember a secret value so that the log filter masks it wherever it appears."""
    if len(value) >= 4:  # masking 1-3 character strings would mangle ordinary text
        with _secrets_lock:
            _secrets.add(value)
            _secrets.add(quote(value, safe=""))


def redact_text(text: str) -> str:
    """Mask URL credentials and registered secrets in free text."""
    text = _URL_CREDENTIALS.sub(rf"\g<scheme>\g<user>:{MASK}@", text)
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (the user name is kept)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:{MASK}@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def with_password(url: str, password: str) -> str:
    """Insert ``password`` (percent-encoded) into the userinfo of ``url``."""
    parts = urlsplit(url)
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class RedactingFilter(logging.Filter):
    """A logging filter that renders each record's message and masks secrets in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact_text(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        if record.exc_info and not record.exc_text:
            # Render the traceback now so that its text is scrubbed as well.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True
