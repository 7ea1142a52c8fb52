"""What a batch lets each of its running downloads use now: a share of its rate limit and a
number of connections.

``Shares`` is shared memory created by the batch scheduler before it forks anything (a
memfd: the children it forks inherit the mapping, and one it starts by exec, once it has a
thread, maps the same memory from the descriptor it is handed): the scheduler writes each
running item's share whenever an item starts or ends, and the item's coordinator reads its
own (``Share``) at every look at its lanes. So the rate and the connections that finished
items free go to the items still running, instead of staying split as they were when each
item started. One writer per word, aligned 8-byte stores: no lock.

The same slots say who of the batch receives from which origin now, for a server that
limits the connections of one client (nginx's ``limit_conn``): its 429 or 503 while another
download of the batch receives from it is the server being full, not failing, as it is
within one download (``_failure.FULL``). Each running download (a large item's coordinator,
a seat's small item) holds the origin it receives from in its slot, and until when it
counts as receiving (``Share.receive``, a lease renewed while its bytes come, so that a
refusal met between one item's end and the next one's first bytes is still a full server's);
a refused one asks whether another slot receives from its origin (``receiving_elsewhere``,
pure). A first request under way counts as receiving until it is answered (``Receiving.ask``,
and a coordinator's lanes asking for the first time): as a batch starts, the requests a
full server let in may wait long for their answers. Nobody there receiving, and no first
request under way, the refusal counts as any failure: a server that refuses everyone is
never waited for without end (a request asks for the first time once; a failed one's
retries ask for nobody, whether it was refused or timed out).
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol
from urllib.parse import urlsplit

from ..http._retry import full_refusal

# rate (bytes/s, 0: no limit), connections (the batch writes); the origin the slot's
# download receives from (``origin_key``, 0: none) and until when (monotonic ns: the
# download writes; the batch clears a dead seat's)
_FIELDS = 4
_WORD = 8
# Seconds a download counts as receiving after it was last seen to: more than the look
# of a coordinator at its lanes (every 0.1 s) and the gap between one item's last bytes
# and the next one's first, less than a few of the backoffs a failing server is given.
LEASE = 1.0
FOREVER = 2**63 - 1  # a lease that lasts until it is ended (a seat reading a body)


class Shares:
    """One slot per download that may run at once; the batch writes, downloads read.

    Memory of no file (a memfd; where a sandbox refuses one, an unlinked temporary file),
    inherited by the processes the batch forks, and mapped by one it starts by exec from
    the descriptor it is handed (``fd``, ``inherited``); or, given ``path``, a file of its
    own that another process opens by that name (a cluster task's download runs in a
    clean process, started by exec), which is how it pickles."""

    def __init__(self, slots: int, path: str | None = None, *, fd: int | None = None) -> None:
        self.slots, self.path = slots, path
        self.fd: int | None = None  # the memory file, kept to hand to a child started by exec
        size = max(1, slots) * _FIELDS * _WORD
        if fd is not None:  # ours by inheritance (``inherited``)
            self._map = mmap.mmap(fd, size)
            os.close(fd)
        elif path is None:
            self.fd = _memory_file(size)
            if self.fd is None:  # no memory file at all: for forked children only
                self._map = mmap.mmap(-1, size)
            else:
                self._map = mmap.mmap(self.fd, size)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                if os.fstat(fd).st_size < size:
                    os.ftruncate(fd, size)
                self._map = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        self._words = memoryview(self._map).cast("q")

    @classmethod
    def inherited(cls, slots: int, fd: int) -> Shares:
        """The batch's ``Shares`` in a child started by exec, handed their memfd as ``fd``
        (closed here once mapped)."""
        return cls(slots, fd=fd)

    def close(self) -> None:
        """The batch is over: its descriptor goes (the mapping stays while anything uses it)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __reduce__(self) -> tuple[type[Shares], tuple[int, str]]:
        if self.path is None:
            raise TypeError("a batch's Shares are inherited (or handed by descriptor), not pickled")
        return (Shares, (self.slots, self.path))

    def set(self, slot: int, rate: int | None, connections: int) -> None:
        self._words[slot * _FIELDS] = rate or 0
        self._words[slot * _FIELDS + 1] = connections

    def rate(self, slot: int) -> int | None:
        return int(self._words[slot * _FIELDS]) or None

    def connections(self, slot: int) -> int:
        return int(self._words[slot * _FIELDS + 1])

    def share(self, slot: int) -> Share:
        return Share(self, slot)

    def receive(self, slot: int, key: int, until: int) -> None:
        """The slot's download receives from origin ``key`` until ``until`` (monotonic ns)."""
        self._words[slot * _FIELDS + 2] = key
        self._words[slot * _FIELDS + 3] = until

    def key(self, slot: int) -> int:
        return int(self._words[slot * _FIELDS + 2])

    def clear(self, slot: int) -> None:
        """The slot's download is gone (its process died): it receives no more."""
        self.receive(slot, 0, 0)

    def ended(self, slot: int) -> None:
        """The slot's download ended, however: a lease that lasted until it was ended (a
        probe under way when its process died, killed) ends with it; a shorter one runs
        out, so a refusal just after its last bytes is still a full server's."""
        if self._words[slot * _FIELDS + 3] == FOREVER:
            self.clear(slot)

    def receivers(self) -> tuple[list[int], list[int]]:
        """Every slot's origin and lease, read in bulk."""
        keys = self._words[2 : self.slots * _FIELDS : _FIELDS].tolist()
        untils = self._words[3 : self.slots * _FIELDS : _FIELDS].tolist()
        return keys, untils


class Share:
    """One download's slot: what it may use now (read at every look, it changes)."""

    def __init__(self, shares: Shares, slot: int) -> None:
        self._shares, self.slot = shares, slot

    def rate(self) -> int | None:
        """Bytes/s for all its lanes together (None: no limit)."""
        return self._shares.rate(self.slot)

    def connections(self) -> int:
        """Lanes it may run at once."""
        return self._shares.connections(self.slot)

    def receive(self, url: str, lease: float | None = LEASE) -> None:
        """It receives from ``url``'s origin now, and counts as receiving ``lease`` seconds
        more (None: until ``received``)."""
        until = FOREVER if lease is None else _later(lease)
        self._shares.receive(self.slot, origin_key(url), until)

    def received(self) -> None:
        """Its body is over: it counts as receiving ``LEASE`` seconds more, no longer."""
        key = self._shares.key(self.slot)
        if key:
            self._shares.receive(self.slot, key, _later(LEASE))

    def clear(self) -> None:
        """It receives no more, nor asks (its first request refused, or its process died)."""
        self._shares.clear(self.slot)

    def others_receiving(self, url: str) -> bool:
        """Whether another download of the batch receives from ``url``'s origin now."""
        keys, untils = self._shares.receivers()
        return receiving_elsewhere(keys, untils, self.slot, origin_key(url), time.monotonic_ns())


class Lanes(Protocol):
    """What ``Receiving.lanes`` reads of a download's lanes (``Parts``)."""

    def received(self) -> int: ...  # body bytes read off the wire so far, all told

    def asking(self) -> bool: ...  # one of them asks for the first time (``Part.asking``)


class Receiving:
    """A download's part in who of its batch receives where (nothing without a batch): a
    coordinator says so while its lanes' bytes come, its lease renewed at each look and as
    a lane ends (a small part may come whole between two looks), or while a lane asks for
    the first time; a probe says so while its first request is under way (``ask``). It
    hears whether another download of the batch receives from an origin that refused it."""

    def __init__(self, share: Share | None) -> None:
        self.share = share
        self.heard = 0  # bytes its lanes had received when it last said so
        self.asks = False  # its probe's first request is under way (``ask``)

    def lanes(self, lanes: Lanes, url: str) -> None:
        """Its lanes (``Parts``) at ``url``'s origin: have they received more bytes since it
        last said so, or does one of them ask there for the first time?"""
        if self.share is not None and ((now := lanes.received()) > self.heard or lanes.asking()):
            self.heard = max(now, self.heard)
            self.share.receive(url)

    def ask(self, url: str) -> None:
        """Its probe's first request goes to ``url``'s origin: until it is answered, a
        refusal there is the server being full to the rest of its batch, as if it received
        (a server full as a batch starts let some first requests in, whose answers may be
        slow to come). A refusal of its own ends that (``refused``), as any other failure of
        its request does (``backoff``), and the end of its probe (``answered``)."""
        if self.share is not None:
            self.share.receive(url, lease=None)
            self.asks = True

    @contextlib.contextmanager
    def asking(self, url: str) -> Iterator[None]:
        """Its probe (the block) under way: it ``ask``s from the start, and is ``answered``
        at the end, let in if the block returns, failed if it raises."""
        self.ask(url)
        try:
            yield
        except BaseException:
            self.answered(ok=False)
            raise
        self.answered(ok=True)

    def refused(self, url: str) -> bool:
        """Its probe was refused as by a full server: it asks no more (its retries do not
        keep others waiting); whether another download of its batch receives, or asks for
        the first time, at ``url``'s origin."""
        self.answered(ok=False)
        return self.elsewhere(url)

    def backoff(self, sleep: Callable[[float], None]) -> Callable[[float], None]:
        """``sleep``, its probe's backoffs: each comes after a failed request, refused or not
        (a timeout, a 500), so from the first on it asks no more: a request asks for the
        first time once, and a retry keeps nobody waiting however its first try failed."""

        def pause(seconds: float) -> None:
            self.answered(ok=False)
            sleep(seconds)

        return pause

    def answered(self, ok: bool) -> None:
        """Its probe ended: let in (``ok``: it says soon that it receives; until then, a
        lease), or failed: it asks no more."""
        if self.share is not None and self.asks:
            self.asks = False
            if ok:
                self.share.received()
            else:
                self.share.clear()

    def elsewhere(self, url: str) -> bool:
        """Whether another download of its batch receives from ``url``'s origin now."""
        return self.share is not None and self.share.others_receiving(url)

    def full(self, error: BaseException) -> bool:
        """Whether ``error`` is a full server's refusal while another of its batch receives
        there (``_failure.FULL``)."""
        return full_refusal(error) and self.elsewhere(error.url)


def _later(seconds: float) -> int:
    return time.monotonic_ns() + int(seconds * 1e9)


def origin_key(url: str) -> int:
    """A nonzero word naming ``url``'s origin (scheme, host, port) alike in every process
    (``hash`` is salted per interpreter, and a child may be a fresh one)."""
    parts = urlsplit(url)
    port = parts.port or {"https": 443}.get(parts.scheme, 80)
    origin = f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"
    word = int.from_bytes(
        hashlib.blake2b(origin.encode(), digest_size=8).digest(), "big", signed=True
    )
    return word or 1


def receiving_elsewhere(
    keys: Sequence[int], untils: Sequence[int], mine: int, key: int, now: int
) -> bool:
    """Whether a slot other than ``mine`` receives from origin ``key`` at ``now``: it names
    that origin, and its lease runs past ``now``."""
    return any(
        slot != mine and k == key and until > now
        for slot, (k, until) in enumerate(zip(keys, untils, strict=True))
    )


def _memory_file(size: int) -> int | None:
    """A descriptor of ``size`` bytes of memory no name leads to, for an exec'd child to
    map: a memfd, or where a sandbox refuses memfd_create (gVisor, older seccomp profiles),
    an unlinked file of the temporary directory. Without one, a threaded scheduler would
    have to fork its items, which it must not (a lock another thread holds stays held in
    the child). Either file may be refused its size (a file-size limit below it, ulimit -f,
    binds a memfd too; a full temporary directory): then there is none."""
    with contextlib.suppress(OSError):
        return _sized(os.memfd_create("blobdl-shares", os.MFD_CLOEXEC), size)
    try:
        with tempfile.TemporaryFile(prefix="blobdl-shares-") as file:  # unlinked at once
            # not inheritable: handed to a child by pass_fds
            return _sized(os.dup(file.fileno()), size)
    except OSError:
        return None


def _sized(fd: int, size: int) -> int:
    """``fd``, grown to ``size`` bytes; closed if it cannot be (OSError)."""
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        raise
    return fd
