"""Bytes a server sends past a response's end are never the next response (RFC 9112 6.3:
a client "MUST NOT process ... such extra data as a separate response").

A batch's seat keeps its connection from one small item to the next, a lane from one
chunk of its part to the next. Whatever a server glues behind an answer on such a
connection (more body than its Content-Length, a whole second response, one forged to look
exactly like the answer the client will ask for next), the next item or chunk gets its own
exact bytes, or fails cleanly and is asked again on a fresh connection: never silently
other bytes. The server's ``raw`` action sends the trail in the same write as the answer's
end, so it is there by the time the client has read the answer: behind a small body it is
already in http.client's buffer; behind a larger one it waits in the socket (or in the TLS
layer) as the connection idles in its pool, as an unsolicited response would. Each case on
the three ways a body is read: spliced (plain HTTP), gathered (plain, no ``os.splice``),
gathered over TLS, and over TLS inside an https proxy's TLS.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import blobdl
from blobdl import Downloader, Item
from faultserver.proxy import ForwardProxy
from faultserver.serverctl import ServerHandle, make_blob
from tests.conftest import PART, Blob, fast_settings, sha256_file
from tests.integration.conftest import PKI

Make = Callable[..., Blob]
PATHS = ("spliced plain", "gathered plain", "gathered tls", "tls in a proxy's tls")
SIZES = {"in http.client's buffer": 1000, "left in the socket": PART // 2}
CHUNK = 64 * 1024  # a lane's first request (min_steal_size)
# The lane's second request: a forged answer to it glued behind the first fits in the TLS
# record that ends the first body, or spills past it (and past http.client's buffer).
RESTS = {"short": 700, "longer than a record": 20_000}


def forged(start: int, length: int, total: int) -> str:
    """A 206 of ``length`` zero bytes from ``start``: the answer to the client's next request
    as it will ask it, but for the bytes. Read as that answer, it would be written."""
    head = f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{start + length - 1}"
    return f"{head}/{total}\r\nContent-Length: {length}\r\n\r\n" + "\0" * length


def trails(next_start: int, next_length: int, next_total: int) -> dict[str, str]:
    return {
        "extra body": "\0" * 100,
        "garbage": "not a status line\r\n\r\n",
        "a second response": forged(next_start, next_length, next_total),
        "two": forged(next_start, next_length, next_total) * 2,
    }


@dataclass(frozen=True)
class Origin:
    server: ServerHandle
    settings: dict[str, Any]  # how to reach it: a CA to trust, a proxy to go through

    def fast(self, **overrides: Any) -> blobdl.Settings:
        return fast_settings(**self.settings, **overrides)


@pytest.fixture
def origin(
    request: pytest.FixtureRequest, server: ServerHandle, pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Origin]:
    """The server for the read path in ``request.param`` (workers inherit a missing splice)."""
    if request.param == "gathered plain":
        monkeypatch.delattr(os, "splice")
    if request.param in ("spliced plain", "gathered plain"):
        yield Origin(server, {})
        return
    tls: ServerHandle = request.getfixturevalue("tls_server")
    tls.reset()  # (only ``server`` is reset for every test)
    trusted = {"ca_bundle": pki.ca_pem, "trust_env": False}
    if request.param == "gathered tls":
        yield Origin(tls, trusted)
        return
    with ForwardProxy(tls=(pki.server_cert, pki.server_key)) as proxy:
        yield Origin(tls, trusted | {"proxy": proxy.url})


def blob_on(origin: Origin, size: int, seed: int) -> Blob:
    name = f"leftover-{size}-{seed}.bin"
    digest = make_blob(origin.server.root, name, size, seed)
    return Blob(name, size, digest, origin.server.url(name))


@pytest.mark.parametrize("origin", PATHS, indirect=True)
@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("trail", trails(0, 0, 0).keys())
def test_bytes_behind_a_small_items_answer_are_never_the_next_items(
    origin: Origin, tmp_path: Path, size: int, trail: str
) -> None:
    """Two small items on one seat, over one kept connection."""
    first, then = blob_on(origin, size, 1), blob_on(origin, 700, 2)
    glued = trails(0, then.size, then.size)[trail]
    origin.server.set_faults({"path": f"/files/{first.name}", "action": "raw", "trail": glued})
    items = [Item(first.url, str(tmp_path / "first")), Item(then.url, str(tmp_path / "then"))]
    results = blobdl.download_many(items, max_connections=1, settings=origin.fast())
    assert all(r.ok for r in results), results
    assert sha256_file(tmp_path / "first") == first.sha256
    assert sha256_file(tmp_path / "then") == then.sha256


@pytest.mark.parametrize("origin", PATHS, indirect=True)
@pytest.mark.parametrize("rest", RESTS.values(), ids=RESTS.keys())
@pytest.mark.parametrize("trail", trails(0, 0, 0).keys())
def test_bytes_behind_a_chunks_answer_are_never_the_next_chunks(
    origin: Origin, tmp_path: Path, rest: int, trail: str
) -> None:
    """One lane, one part, two requests over one connection: [0, CHUNK), then the rest."""
    blob = blob_on(origin, CHUNK + rest, 3)
    glued = trails(CHUNK, rest, blob.size)[trail]
    rule = {"path": f"/files/{blob.name}", "skip": 1, "action": "raw", "trail": glued}
    origin.server.set_faults(rule)  # the probe's answer aside
    settings = origin.fast(connections=1, min_steal_size=CHUNK,
                           min_part_size=blob.size, max_part_size=blob.size)  # fmt: skip
    Downloader(settings).download(blob.url, tmp_path / "out")
    assert sha256_file(tmp_path / "out") == blob.sha256
    asked = origin.server.stats()["ranges"][1:3]
    assert asked == [f"bytes=0-{CHUNK - 1}", f"bytes={CHUNK}-{blob.size - 1}"]


@pytest.mark.parametrize("origin", PATHS, indirect=True)
def test_an_answer_in_odd_pieces_on_a_kept_connection_is_read_whole(
    origin: Origin, tmp_path: Path
) -> None:
    """The second item's answer comes in separate writes cut inside "HTTP/1.1", the status
    code, the CRLF ending the status line and the blank line ending the head."""
    first, then = blob_on(origin, 1000, 4), blob_on(origin, 900, 5)
    cuts = [1, 6, 10, 11, 15, 16, 30, 31]
    origin.server.set_faults({"path": f"/files/{then.name}", "action": "raw", "split": cuts,
                              "gap": 0.01})  # fmt: skip
    items = [Item(first.url, str(tmp_path / "first")), Item(then.url, str(tmp_path / "then"))]
    results = blobdl.download_many(items, max_connections=1, settings=origin.fast())
    assert all(r.ok for r in results), results
    assert sha256_file(tmp_path / "then") == then.sha256
    assert origin.server.stats()["requests"] == 2  # no retry: the pieces made one answer
