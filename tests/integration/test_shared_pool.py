"""One pool, several threads: a pull's blob lookups share the registry's pool
(``Registry.blob_sources``), so a connection must only ever be closed by the request that
holds it, and a connection closed under a request anyway is a connection failure in our
words, never an error from inside http.client.

What broke: a lookup answered 401 read the answer's words (``error_body``) to their end,
which handed its connection back to the pool, and then closed it. By then another lookup
could have taken it and sent its request, whose answer http.client then read from no socket
(``'NoneType' object has no attribute 'makefile'``): now and then, under load, while a token
expired under several layers was renewed (``test_pull.py``).

Real fault server over loopback; the interleaving of two threads is not left to chance: what
is pinned is what makes it possible (a connection back in the pool, closed by its last user)
and what a request meets when it happens (its connection closed between request and answer).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from blobdl.errors import ConnectionFailed
from blobdl.http._error_words import error_body
from blobdl.http._pool import make_pool
from blobdl.http._request import base_headers, send_get
from blobdl.http._translate import translate_errors
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings

Make = Callable[..., Blob]
REFUSAL = '{"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}'


def test_an_error_answers_connection_is_never_handed_to_another_request(
    make: Make, server: ServerHandle
) -> None:
    """The reader of an error answer closes the answer's connection (it serves no other
    request): so that connection must be one nobody else can hold. The pool's next request,
    another thread's as likely as this one's, gets a connection of its own."""
    blob = make(PART, seed=901)
    server.set_faults({"path": f"/files/{blob.name}", "action": "status", "status": 401,
                       "headers": {"Content-Type": "application/json"}, "body": REFUSAL,
                       "times": 1})  # fmt: skip
    pool = make_pool(fast_settings())
    try:
        refused = send_get(pool, blob.url, base_headers())
        assert refused.status == 401
        refused_on = refused.connection
        assert b"UNAUTHORIZED" in error_body(blob.url, refused, 5.0)  # read to its end
        refused.close()
        answered = send_get(pool, blob.url, base_headers())
        assert answered.status == 200
        assert answered.connection is not refused_on  # not the one its reader closed
        answered.close()
    finally:
        pool.clear()


def test_a_connection_closed_between_its_request_and_its_answer_is_a_connection_failure(
    make: Make, server: ServerHandle
) -> None:
    """What a request meets if its connection is closed under it after all: a
    ``ConnectionFailed`` (retried like any broken connection), never an AttributeError
    from inside http.client."""
    blob = make(PART, seed=902)
    parts = urlsplit(blob.url)
    pool = make_pool(fast_settings()).connection_from_url(blob.url)
    conn = pool.ConnectionCls(parts.hostname or "", parts.port)
    try:
        conn.request("GET", parts.path)
        conn.close()  # as another thread would
        with pytest.raises(ConnectionFailed) as failed, translate_errors(blob.url):
            conn.getresponse()
    finally:
        conn.close()
    assert failed.value.retryable
    assert "closed under its request" in str(failed.value)
