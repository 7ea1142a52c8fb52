"""A connection's set-up stays within the connect timeout before its socket exists too:
a host whose first address is a black hole (a broken IPv6 route: its SYNs are dropped) is
reached at its next address, and a name whose lookup never answers (a resolver that drops
packets) fails as a connect timeout, retried as one, and never holds up Ctrl-C.

Names are made to resolve as the test says in a private mount namespace (``unshare``)
whose ``/etc/hosts`` and ``/etc/resolv.conf`` are the test's own: ``dial.test`` is ::1
then 127.0.0.1, and the resolver is a UDP socket of the test's that reads nothing. Each
call runs in a process that must end within ``BOUND``, far below what a set-up without
those bounds takes (a black hole's whole connect timeout per connection, a lookup's 30 s).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from blobdl.errors import EXIT_INTERRUPTED
from faultserver.serverctl import ServerHandle, make_blob
from tests.conftest import PART, REPO, sha256_file
from tests.integration.test_trust_stops import STOPS, Cli, one_error

BOUND = 20.0  # seconds a call may take; an unbounded lookup takes 30, a black hole more
CONNECT_TIMEOUT = 1.0
# Loopback addresses of the tests' own, for their silent resolvers: one each, per session
# (the suite's sessions run side by side; two tests on one address could not both bind 53).
_RESOLVERS = itertools.count(1)


def resolver_address() -> str:
    return f"127.83.{os.getpid() % 256}.{next(_RESOLVERS) % 254 + 1}"


# A download (a probe, then lanes) or a batch of ``items`` small ones, as a library caller
# asks; ``connections`` is the batch's budget too.
_CALLER = """
import json, sys
import blobdl
door, url, out, settings = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
count = int(settings.pop("items", 3))
settings = blobdl.Settings(trust_env=False, backoff_unit=0.001, max_backoff=0.05, **settings)
try:
    if door == "download":
        blobdl.Downloader(settings).download(url, f"{out}/blob")
    else:
        items = [blobdl.Item(f"{url}-{n}", f"{out}/small-{n}") for n in range(count)]
        ran = blobdl.download_many(items, settings=settings, max_connections=settings.connections)
        for result in ran:
            if result.error is not None:
                raise result.error
except blobdl.BlobdlError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
else:
    print(json.dumps({"error": None}))
"""


def in_namespace(tmp_path: Path, hosts: str, resolver: str | None = None) -> list[str]:
    """A command prefix: what follows runs where /etc/hosts is ``hosts`` (and
    /etc/resolv.conf names ``resolver`` alone, one attempt of 30 s), the machine's own
    files untouched (``unshare --user --mount``)."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no mount namespace here (unshare --user --mount refused)")
    (tmp_path / "hosts").write_text(hosts)
    mounts = f"mount --bind {tmp_path / 'hosts'} /etc/hosts"
    if resolver is not None:
        (tmp_path / "resolv.conf").write_text(
            f"nameserver {resolver}\noptions timeout:30 attempts:1\n"
        )
        mounts += f" && mount --bind {tmp_path / 'resolv.conf'} /etc/resolv.conf"
    return ["unshare", "-rm", "sh", "-c", f'{mounts} && exec "$@"', "sh"]


def called(
    prefix: list[str], door: str, url: str, out: Path, bound: float = BOUND, **settings: object
) -> dict[str, str]:
    """How ``door`` ends for ``url``, run by ``prefix`` in a process that must end in
    ``bound`` seconds."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    settings = {"connect_timeout": CONNECT_TIMEOUT, **settings}
    args = [door, url, str(out), json.dumps(settings)]
    done = subprocess.run([*prefix, sys.executable, "-c", _CALLER, *args], capture_output=True,
                          text=True, timeout=bound, cwd=REPO, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer: dict[str, str] = json.loads(done.stdout.splitlines()[-1])
    return answer


@contextlib.contextmanager
def blackhole_v6(port: int) -> Iterator[None]:
    """[::1]:``port`` a black hole: a listener that never accepts, its queue (of one, with a
    backlog of 0) filled by our own connection, so every new ``connect`` waits."""
    try:
        listener = socket.socket(socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 here")
    with listener, socket.socket(socket.AF_INET6) as filler:
        try:
            listener.bind(("::1", port))
        except OSError as exc:
            pytest.skip(f"[::1]:{port} cannot be bound: {exc}")
        listener.listen(0)
        filler.connect(("::1", port))
        yield


@contextlib.contextmanager
def blackhole(address: str, port: int) -> Iterator[int]:
    """``address``:``port`` (0: any free one) a black hole on IPv4; its port."""
    with socket.socket() as listener, socket.socket() as filler:
        try:
            listener.bind((address, port))
        except OSError as exc:
            pytest.skip(f"{address}:{port} cannot be bound: {exc}")
        listener.listen(0)
        filler.connect(listener.getsockname())
        yield listener.getsockname()[1]


@contextlib.contextmanager
def silent_resolver(address: str) -> Iterator[socket.socket]:
    """A name server that reads nothing: every lookup sent to it waits its whole timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as resolver:
        try:
            resolver.bind((address, 53))
        except OSError as exc:
            pytest.skip(f"no resolver of our own on {address}:53: {exc}")
        yield resolver


def lookups(resolver: socket.socket) -> set[int]:
    """The source ports of the queries that came to ``resolver`` (one per lookup: glibc
    asks for A and AAAA from one socket)."""
    resolver.setblocking(False)
    ports = set()
    with contextlib.suppress(BlockingIOError):
        while True:
            ports.add(resolver.recvfrom(512)[1][1])
    return ports


# --- a host whose first address is a black hole -------------------------------------------


@pytest.mark.parametrize("door", ["download", "batch"])
def test_a_host_whose_first_address_is_a_black_hole_is_reached_at_the_next(
    door: str, server: ServerHandle, tmp_path: Path
) -> None:
    """``dial.test`` is ::1 (SYNs dropped) then 127.0.0.1 (the server). Each address got
    the whole connect timeout, so the one that answers came too late: every connection
    failed (the probe's, each lane's, each small item's), or with a longer timeout waited
    it all out first. The addresses share it now, and every connection is set up."""
    prefix = in_namespace(tmp_path, "::1 dial.test\n127.0.0.1 dial.test\n")
    digest = make_blob(server.root, "dial.bin", 4 * PART + 5, seed=81)
    for n in range(3):
        make_blob(server.root, f"dial-small.bin-{n}", 1000 + n, seed=82 + n)
    name = "dial.bin" if door == "download" else "dial-small.bin"
    url = f"http://dial.test:{server.port}/files/{name}"
    settings = {"min_part_size": PART, "max_part_size": PART, "connections": 4, "retries": 0}
    with blackhole_v6(server.port):
        answer = called(prefix, door, url, tmp_path, **settings)
    assert answer["error"] is None, answer
    seen = server.stats()
    assert seen["max_concurrent"] <= 4  # one socket for each connection: none raced
    if door == "download":
        assert sha256_file(tmp_path / "blob") == digest
        assert seen["per_path"]["/files/dial.bin"] >= 5  # the probe, then every part
    else:
        for n in range(3):
            assert (tmp_path / f"small-{n}").stat().st_size == 1000 + n


def test_the_address_that_answered_is_tried_first_by_the_next_connection(
    server: ServerHandle, tmp_path: Path
) -> None:
    """Six small items on one connection at a time, the server closing each after its
    answer: six connections in turn. Each paid the black hole's share (2 s) before it
    reached 127.0.0.1, twelve seconds in all; only the first does now (the test's bound
    is eight)."""
    prefix = in_namespace(tmp_path, "::1 dial.test\n127.0.0.1 dial.test\n")
    for n in range(6):
        make_blob(server.root, f"dial-again.bin-{n}", 100 + n, seed=90 + n)
    server.set_faults({"path": "/files/*", "times": None, "action": "headers",
                       "set": {"X-Then": "close"}})  # fmt: skip
    url = f"http://dial.test:{server.port}/files/dial-again.bin"
    with blackhole_v6(server.port):
        answer = called(prefix, "batch", url, tmp_path, bound=8.0, items=6, connections=1,
                        retries=0, connect_timeout=4.0)  # fmt: skip
    assert answer["error"] is None, answer
    assert server.stats()["connections"] >= 6
    for n in range(6):
        assert (tmp_path / f"small-{n}").stat().st_size == 100 + n


def test_a_name_resolving_to_black_holes_alone_fails_within_one_connect_timeout(
    tmp_path: Path,
) -> None:
    """Five addresses, every one a black hole: each got the whole connect timeout, so the
    set-up took five; it is over within one now (the test's bound is three), and fails as
    a connect timeout."""
    v4 = [f"127.0.0.{n}" for n in range(1, 5)]
    hosts = "".join(f"{address} dial.test\n" for address in ["::1", *v4])
    prefix = in_namespace(tmp_path, hosts)
    with contextlib.ExitStack() as holes:
        port = holes.enter_context(blackhole(v4[0], 0))
        for address in v4[1:]:
            holes.enter_context(blackhole(address, port))
        holes.enter_context(blackhole_v6(port))
        answer = called(prefix, "download", f"http://dial.test:{port}/x", tmp_path,
                        bound=3 * 2.0, retries=0, connect_timeout=2.0)  # fmt: skip
    assert answer["message"].startswith(f"Failed to connect to dial.test port {port}: timed out")


# --- a name whose lookup never answers -----------------------------------------------------


def test_a_lookup_that_never_answers_fails_as_a_connect_timeout_retried_as_one(
    tmp_path: Path,
) -> None:
    address = resolver_address()
    prefix = in_namespace(tmp_path, "127.0.0.1 localhost\n", address)
    with silent_resolver(address) as resolver:
        answer = called(prefix, "download", "http://nowhere.test:9/x", tmp_path, retries=2)
        asked = lookups(resolver)
    assert answer["message"].startswith("Failed to connect to nowhere.test port 9: timed out")
    assert len(asked) == 3  # the first attempt and its two retries, each looked it up


@pytest.mark.parametrize("signum", STOPS, ids=["SIGTERM", "SIGINT"])
def test_a_stop_during_a_lookup_that_never_answers_is_heard_at_once(
    signum: int, tmp_path: Path
) -> None:
    """The CLI's connect timeout (30 s) is the lookup's own: only a wait that hears the
    signal ends the run within the test's deadline."""
    address = resolver_address()
    prefix = in_namespace(tmp_path, "127.0.0.1 localhost\n", address)
    with silent_resolver(address) as resolver:
        run = Cli([*prefix, sys.executable, "-m", "blobdl", "http://nowhere.test:9/x",
                   "-o", str(tmp_path / "out")])  # fmt: skip
        resolver.settimeout(BOUND)
        resolver.recvfrom(512)  # the lookup is under way
        run.signal(signum)
        code, lines = run.finish()
    assert code == EXIT_INTERRUPTED, lines
    assert f"signal {int(signum)}" in one_error(lines), lines
