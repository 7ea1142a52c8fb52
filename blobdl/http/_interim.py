"""Interim (1xx) responses: skipped before the real one, on every connection of ours.

A server may send any number of informational responses before its answer (RFC 9110 15.2):
``103 Early Hints`` is common at CDNs. http.client skips ``100 Continue`` only and hands any
other 1xx over as if it were the answer ("HTTP 103"); urllib3 does the same. The response
class here skips them all while reading the status line, for the probe, every range
request and a proxy's answer to CONNECT alike. ``101 Switching Protocols`` is the one 1xx
that is final, and we never ask to upgrade: it breaks the protocol (``InterimError``, a
``BadResponse`` once translated), as does an endless run of interim responses.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable

MAX_INTERIM = 100  # interim responses before one answer; a legitimate server sends one or two


class InterimError(http.client.HTTPException):
    """The status line was a 101 nobody asked for, or behind too many interim responses."""


class InterimSkippingResponse(http.client.HTTPResponse):
    """http.client's response, with every 1xx but 101 skipped before the real status line."""

    def _read_status(self) -> tuple[str, int, str]:
        read: Callable[[], tuple[str, int, str]] = super()._read_status  # type: ignore[misc]
        for _ in range(MAX_INTERIM + 1):
            version, status, reason = read()
            if status == 101:
                raise InterimError("switched protocols (101) although no upgrade was asked")
            if not 100 <= status < 200:
                return version, status, reason
            http.client.parse_headers(self.fp)  # an interim response is a header block only
        raise InterimError(f"more than {MAX_INTERIM} interim (1xx) responses before an answer")
