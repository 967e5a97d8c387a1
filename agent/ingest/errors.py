"""Error classes of a stream failure, shared by the supervised readers and the one-off probe."""

from __future__ import annotations

import errno
import re

import av
import av.error

_URL_IN_TEXT = re.compile(r"'?[a-z][a-z0-9+.-]*://\S+")
_STATUS_401 = re.compile(r"\b40[13]\b")
_STATUS_404 = re.compile(r"\b404\b")


def classify_error(exc: BaseException) -> str:  # noqa: PLR0911 - a decision table
    """Map a PyAV/OS error to a short class the platform can group by."""
    # Drop URLs first: a port such as 40123 must not read as an HTTP 401.
    text = _URL_IN_TEXT.sub("", str(exc).lower())
    if isinstance(exc, av.error.HTTPNotFoundError | FileNotFoundError) or _STATUS_404.search(text):
        return "not_found"
    if isinstance(
        exc, av.error.HTTPUnauthorizedError | av.error.HTTPForbiddenError
    ) or _STATUS_401.search(text):
        return "auth_failed"
    code = getattr(exc, "errno", None)
    if isinstance(exc, ConnectionRefusedError) or code == errno.ECONNREFUSED or "refused" in text:
        return "refused"
    if isinstance(exc, TimeoutError) or code == errno.ETIMEDOUT or "timed out" in text:
        return "timeout"
    if isinstance(exc, EOFError) or "end of file" in text:
        return "ended"
    if isinstance(exc, av.error.InvalidDataError) or "invalid data" in text:
        return "decode_error"
    if code in {errno.EHOSTUNREACH, errno.ENETUNREACH} or "unreachable" in text:
        return "unreachable"
    return "error"
