"""What urllib3's own loggers say of blobdl's requests: their URLs redacted.

A caller that turns on DEBUG logging (``logging.basicConfig(level=logging.DEBUG)``) gets
urllib3's lines, which name each request's target or whole URL: ``"GET /blob?X-Amz-
Signature=... HTTP/1.1" 206``, "Redirecting ... -> ...", "Incremented Retry for (url=...)",
"Retrying (...) after connection broken by ...: /path?sig=...", "Failed to parse headers
(url=...)". urllib3 passes the URL as one argument of the record, so each argument that is
text goes through ``redact_url`` (a host, a method or a version string is left as it is).

Only the records of blobdl's own requests (``ours``, around each one) are changed: a caller
that uses urllib3 for its own work keeps its lines as urllib3 wrote them. A context variable
marks them; urllib3 logs in the thread that makes the request, inside the call.
A filter is attached to each logger that logs a URL: a filter on the parent "urllib3"
logger is not consulted for its children's records.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from .._redact import redact_url

# urllib3 2.x: connectionpool (request lines, retries, redirects), poolmanager (redirects),
# util.retry (increments), connection (unparsable headers), response (none today).
LOGGERS = (
    "urllib3.connectionpool",
    "urllib3.poolmanager",
    "urllib3.util.retry",
    "urllib3.connection",
    "urllib3.response",
)
_OURS: contextvars.ContextVar[bool] = contextvars.ContextVar("blobdl_request", default=False)


@contextmanager
def ours() -> Iterator[None]:
    """Within: the requests urllib3 logs are blobdl's, their URLs redacted."""
    token = _OURS.set(True)
    try:
        yield
    finally:
        _OURS.reset(token)


class _Redacting(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _OURS.get() and isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg) for arg in record.args)
        return True


def _redacted(arg: object) -> object:
    return redact_url(arg) if isinstance(arg, str) else arg


_FILTER = _Redacting()
for _name in LOGGERS:
    logging.getLogger(_name).addFilter(_FILTER)
