"""Fast self-tests of the fault-injecting test server."""

from __future__ import annotations

import hashlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from faultserver.serverctl import ServerHandle, make_blob, start_server

SIZE = 3 * (1 << 20) + 12345  # not a chunk multiple, to catch off-by-ones


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    root = tmp_path_factory.mktemp("srvroot")
    with start_server(root) as handle:
        yield handle


@pytest.fixture(autouse=True)
def _clean(srv: ServerHandle) -> None:
    srv.reset()


@pytest.fixture(scope="module")
def blob(srv: ServerHandle) -> tuple[str, bytes]:
    digest = make_blob(srv.root, "blob.bin", SIZE, seed=7)
    return digest, (srv.root / "blob.bin").read_bytes()


def conn(srv: ServerHandle) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)


def get(
    srv: ServerHandle, path: str, headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    c = conn(srv)
    try:
        c.request("GET", path, headers=headers or {})
        resp = c.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        c.close()


def test_full_get(srv: ServerHandle, blob: tuple[str, bytes]) -> None:
    status, headers, body = get(srv, "/files/blob.bin")
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == blob[0]
    assert headers["Content-Length"] == str(SIZE)
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["ETag"].startswith('"') and headers["Last-Modified"]


def test_range_206(srv: ServerHandle, blob: tuple[str, bytes]) -> None:
    status, headers, body = get(srv, "/files/blob.bin", {"Range": "bytes=1000-1999"})
    assert (status, headers["Content-Range"]) == (206, f"bytes 1000-1999/{SIZE}")
    assert body == blob[1][1000:2000]
    status, headers, body = get(srv, "/files/blob.bin", {"Range": "bytes=-10"})
    assert (status, body) == (206, blob[1][-10:])
    assert headers["Content-Range"] == f"bytes {SIZE - 10}-{SIZE - 1}/{SIZE}"


def test_416(srv: ServerHandle, blob: tuple[str, bytes]) -> None:
    (srv.root / "empty.bin").write_bytes(b"")
    status, headers, _ = get(srv, "/files/empty.bin", {"Range": "bytes=0-"})
    assert (status, headers["Content-Range"]) == (416, "bytes */0")
    status, headers, _ = get(srv, "/files/blob.bin", {"Range": f"bytes={SIZE}-"})
    assert (status, headers["Content-Range"]) == (416, f"bytes */{SIZE}")


def test_if_match_and_if_range(srv: ServerHandle, blob: tuple[str, bytes]) -> None:
    etag = get(srv, "/files/blob.bin", {"Range": "bytes=0-0"})[1]["ETag"]
    assert get(srv, "/files/blob.bin", {"If-Match": '"nope"'})[0] == 412
    assert get(srv, "/files/blob.bin", {"If-Match": etag, "Range": "bytes=0-9"})[0] == 206
    assert get(srv, "/files/blob.bin", {"If-Range": '"old"', "Range": "bytes=0-9"})[0] == 200
    # An etag fault simulates a changed remote: the old validator now fails.
    srv.set_faults({"path": "/files/blob.bin", "action": "etag", "value": '"v2"'})
    status, headers, _ = get(srv, "/files/blob.bin", {"If-Match": etag})
    assert (status, headers["ETag"]) == (412, '"v2"')


def test_missing_and_traversal(srv: ServerHandle) -> None:
    assert get(srv, "/files/nope.bin")[0] == 404
    assert get(srv, "/files/..%2Fetc%2Fpasswd")[0] == 404


def test_redirect_chain(srv: ServerHandle, blob: tuple[str, bytes]) -> None:
    for kind in ("redirect", "redirect-abs"):
        path, hops = f"/{kind}/3/blob.bin", 0
        while True:
            status, headers, body = get(srv, path, {"Range": "bytes=0-99"})
            if status != 302:
                break
            hops += 1
            path = urlsplit(headers["Location"]).path
        assert (kind, hops, status, body) == (kind, 3, 206, blob[1][:100])


def test_status_fault_skip_times(srv: ServerHandle, blob: tuple[str, bytes]) -> None:
    srv.set_faults(
        {
            "path": "/files/*",
            "skip": 1,
            "times": 2,
            "action": "status",
            "status": 503,
            "headers": {"Retry-After": "1"},
        }
    )
    c = conn(srv)  # one keep-alive connection: fault replies must keep it usable
    seen = []
    for _ in range(4):
        c.request("GET", "/files/blob.bin", headers={"Range": "bytes=0-9"})
        resp = c.getresponse()
        resp.read()
        seen.append((resp.status, resp.headers.get("Retry-After")))
    c.close()
    assert seen == [(206, None), (503, "1"), (503, "1"), (206, None)]
    assert srv.stats()["rule_hits"] == [3]


def test_reset_after_truncates(srv: ServerHandle, blob: tuple[str, bytes]) -> None:
    srv.set_faults({"path": "/files/blob.bin", "action": "reset_after", "bytes": 5000})
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"GET /files/blob.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        data, error = b"", None
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError as exc:
            error = exc
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert error is not None and body == blob[1][:5000]
    assert srv.stats()["bytes_sent"] == 5000


def test_shift_range_lies(srv: ServerHandle, blob: tuple[str, bytes]) -> None:
    srv.set_faults({"path": "/files/blob.bin", "action": "shift_range", "by": 7})
    status, headers, body = get(srv, "/files/blob.bin", {"Range": "bytes=100-199"})
    assert (status, headers["Content-Range"]) == (206, f"bytes 100-199/{SIZE}")
    assert body == blob[1][107:207]


def test_shape_lane_paces_then_resets(srv: ServerHandle, blob: tuple[str, bytes]) -> None:
    """`shape` puts ttfb, pacing and a cut on one request; later requests are untouched."""
    srv.set_faults(
        {"path": "/files/*", "action": "shape", "ttfb": 0.2, "bps": 1 << 20, "reset_after": 300_000}
    )
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"GET /files/blob.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        with pytest.raises(ConnectionResetError):
            while chunk := s.recv(65536):
                data += chunk
    # Lower bounds only: 0.2 s of ttfb, then ~0.29 s for 300 kB at 1 MiB/s.
    assert time.monotonic() - started >= 0.4
    assert data.partition(b"\r\n\r\n")[2] == blob[1][:300_000]
    assert get(srv, "/files/blob.bin", {"Range": "bytes=0-9"})[2] == blob[1][:10]
    assert srv.stats()["rule_hits"] == [1]


def test_rate_paces_a_request_smaller_than_one_step_only_with_a_smaller_step(
    srv: ServerHandle, blob: tuple[str, bytes]
) -> None:
    """A paced step goes out whole before the pace waits: 32 KiB at 100 KB/s is one default
    step (sent at once), but eight steps of 4 KiB (paced: seven waits of ~41 ms)."""
    for rule, at_least in (({}, 0.0), ({"step": 4096}, 0.25)):
        srv.set_faults({"path": "/files/*", "action": "rate", "bps": 100_000, **rule})
        started = time.monotonic()
        status, _, body = get(srv, "/files/blob.bin", {"Range": "bytes=0-32767"})
        assert (status, body) == (206, blob[1][:32768])
        assert time.monotonic() - started >= at_least  # a lower bound: pacing, never speed
    for bad in (0, -1, 1.5, "x"):
        with pytest.raises(RuntimeError, match="step"):
            srv.set_faults({"path": "/files/*", "action": "rate", "bps": 1, "step": bad})


def test_shape_rejects_two_cuts(srv: ServerHandle) -> None:
    with pytest.raises(RuntimeError, match="not both"):
        srv.set_faults({"path": "/files/*", "action": "shape", "stall_after": 1, "reset_after": 1})


def test_link_bps_caps_all_connections_together(tmp_path: Path) -> None:
    digest = make_blob(tmp_path, "link.bin", 1 << 20, seed=3)
    bodies: dict[int, bytes] = {}

    def fetch(handle: ServerHandle, first: int) -> None:
        rng = f"bytes={first}-{first + (512 << 10) - 1}"
        bodies[first] = get(handle, "/files/link.bin", {"Range": rng})[2]

    with start_server(tmp_path, link_bps=2 << 20) as handle:
        started = time.monotonic()
        threads = [threading.Thread(target=fetch, args=(handle, i << 19)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
    # 1 MiB through a 2 MiB/s link takes ~0.5 s whatever the number of connections;
    # only the lower bound is asserted, a loaded machine may be slower.
    assert elapsed >= 0.4
    assert hashlib.sha256(bodies[0] + bodies[1 << 19]).hexdigest() == digest


def test_stats(srv: ServerHandle, blob: tuple[str, bytes]) -> None:
    get(srv, "/files/blob.bin")
    get(srv, "/files/blob.bin", {"Range": "bytes=10-19"})
    stats = srv.stats()
    assert stats["bytes_sent"] == SIZE + 10
    assert stats["requests"] == 2 and stats["per_path"] == {"/files/blob.bin": 2}
    assert stats["ranges"] == [None, "bytes=10-19"]
    assert stats["headers"][1]["Range"] == "bytes=10-19"
    assert stats["max_concurrent"] >= 1


def test_stop_is_clean(tmp_path: Path) -> None:
    handle = start_server(tmp_path)
    handle.stop()
    handle.stop()
    assert handle.proc.returncode == 0


def test_a_rule_after_another_path_holds_its_reply_until_that_path_is_asked(
    srv: ServerHandle, blob: tuple[str, bytes]
) -> None:
    """``after``: the reply waits (before its status line) until the other path has been
    asked that many times, then is served as its action says: two downloads made to start
    together, however late one of them asks."""
    make_blob(srv.root, "other.bin", 1000, seed=8)
    srv.set_faults({"path": "/files/blob.bin", "action": "rate", "bps": 1 << 30,
                    "after": {"path": "/files/other.bin", "requests": 1}})  # fmt: skip
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"GET /files/blob.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n")
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recv(1)  # held: other.bin not asked yet
        assert get(srv, "/files/other.bin")[0] == 200
        s.settimeout(10)
        reply = b""
        while not reply.endswith(blob[1][:10]):
            reply += s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 206")
    assert srv.stats()["rule_hits"] == [1]


def test_after_names_a_path_and_a_count(srv: ServerHandle) -> None:
    for after in ({"path": "x", "requests": 1}, {"path": "/files/x", "requests": 0}, "/files/x"):
        with pytest.raises(RuntimeError, match="after"):
            srv.set_faults({"path": "/files/*", "action": "rate", "bps": 1, "after": after})


def read_exactly(s: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n and (more := s.recv(n - len(got))):
        got += more
    return got


def test_raw_glues_its_trail_behind_the_reply_on_a_kept_connection(
    srv: ServerHandle, blob: tuple[str, bytes]
) -> None:
    """``trail``: exact bytes past the reply's end, in the same write; the connection
    then serves the next request as usual."""
    glued = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad"
    srv.set_faults({"path": "/files/blob.bin", "action": "raw", "trail": glued})
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"GET /files/blob.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += s.recv(1)
        assert head.startswith(b"HTTP/1.1 206") and b"Content-Length: 10\r\n" in head
        assert read_exactly(s, 10 + len(glued)) == blob[1][:10] + glued.encode()
        s.sendall(b"GET /files/blob.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=10-19\r\n\r\n")
        reply = b""
        while not reply.endswith(blob[1][10:20]):
            reply += s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 206")
    assert srv.stats()["bytes_sent"] == 20  # the file's bytes; not the trail's


def test_raw_sends_exact_bytes_in_the_pieces_asked(srv: ServerHandle) -> None:
    """``send`` replaces the reply, byte for byte (latin-1: one character a byte);
    ``split`` cuts it into separate writes."""
    answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Byte: \xff\r\n\r\nok"
    srv.set_faults({"path": "/files/none", "action": "raw", "send": answer,
                    "split": [1, 8, 11, 12, 200], "gap": 0.05, "close": True})  # fmt: skip
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"GET /files/none HTTP/1.1\r\nHost: x\r\n\r\n")
        pieces = []
        while piece := s.recv(65536):
            pieces.append(piece)
    assert b"".join(pieces) == answer.encode("latin-1")
    assert pieces[0] == b"H"  # the first write alone: the next one waits ``gap``
    assert srv.stats()["bytes_sent"] == 0


def test_raw_rules_that_cannot_be_sent_are_refused_when_posted(srv: ServerHandle) -> None:
    for bad in ({"trail": 3}, {"send": "\u20ac"}, {"split": [0]}, {"split": "1"}):
        with pytest.raises(RuntimeError, match="raw"):
            srv.set_faults({"path": "/files/*", "action": "raw", **bad})


def how_it_ends(s: socket.socket) -> tuple[bytes, str]:
    """What ``s`` received, and how the server ended it: "closed" (EOF), "reset" (an RST),
    or "open" (nothing more within the socket's timeout)."""
    got = b""
    try:
        while more := s.recv(65536):
            got += more
    except ConnectionResetError:
        return got, "reset"
    except TimeoutError:
        return got, "open"
    return got, "closed"


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_no_response_reads_the_request_then_closes_or_resets(
    srv: ServerHandle, reset: bool
) -> None:
    """The client tests of a kept connection lost meet both ends (EOF, an RST) only if the
    server gives both: else ``reset`` would quietly test the close twice."""
    srv.set_faults({"path": "/files/blob.bin", "action": "no_response", "hold": 0,
                    "reset": reset})  # fmt: skip
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"GET /files/blob.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert how_it_ends(s) == (b"", "reset" if reset else "closed")


def test_raw_reset_cuts_the_answer_it_began_with_an_rst(srv: ServerHandle) -> None:
    srv.set_faults({"path": "/files/blob.bin", "action": "raw", "send": "HTTP/1.1 20",
                    "reset": True})  # fmt: skip
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"GET /files/blob.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        got, end = how_it_ends(s)
    assert end == "reset" and b"HTTP/1.1 20".startswith(got)


def test_kept_matches_a_connections_later_requests_or_its_first(
    srv: ServerHandle, blob: tuple[str, bytes]
) -> None:
    srv.set_faults({"path": "/files/blob.bin", "kept": True, "times": None, "action": "status",
                    "status": 503})  # fmt: skip
    c = conn(srv)
    try:
        statuses = []
        for _ in range(3):
            c.request("GET", "/files/blob.bin", headers={"Range": "bytes=0-9"})
            response = c.getresponse()
            response.read()
            statuses.append(response.status)
    finally:
        c.close()
    assert statuses == [206, 503, 503]
    assert get(srv, "/files/blob.bin", {"Range": "bytes=0-9"})[0] == 206  # a new connection's
    for bad in ("yes", 1, "false"):
        with pytest.raises(RuntimeError, match="kept"):
            srv.set_faults({"path": "/files/*", "kept": bad, "action": "status", "status": 503})
