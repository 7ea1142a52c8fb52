"""Who of a batch receives from which origin: the slots of its ``Shares``, and the pure
decision a refused download asks of them."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from blobdl.engine._share import Receiving, Shares, origin_key, receiving_elsewhere

A, B = origin_key("http://mirror/a.bin"), origin_key("http://other/b.bin")
NOW = 1_000


@pytest.mark.parametrize(
    ("case", "keys", "untils", "expected"),
    [
        ("another slot receives there", [0, A], [0, NOW + 1], True),
        ("only the asker receives there", [A, 0], [NOW + 1, 0], False),
        ("another slot receives elsewhere", [0, B], [0, NOW + 1], False),
        ("another slot's lease ran out", [0, A], [0, NOW], False),
        ("nobody receives", [0, 0, 0], [0, 0, 0], False),
        ("one of several receives there", [A, B, 0, A], [NOW + 9, NOW + 9, 0, NOW + 1], True),
    ],
)
def test_receiving_elsewhere(case: str, keys: list[int], untils: list[int], expected: bool) -> None:
    assert receiving_elsewhere(keys, untils, 0, A, NOW) is expected, case


def test_an_origin_is_its_scheme_host_and_port() -> None:
    """A server limits the connections it is sent: one origin, whatever the path or the
    spelling of its default port; another port or scheme is another server."""
    key = origin_key("http://Mirror.example/a/b.bin?x=1")
    assert key == origin_key("http://mirror.example:80/c.bin") != 0
    assert key != origin_key("http://mirror.example:8080/a/b.bin")
    assert key != origin_key("https://mirror.example/a/b.bin")
    assert origin_key("https://mirror.example/") == origin_key("https://mirror.example:443/x")


def test_a_slot_receives_until_its_answer_is_over_then_for_a_lease() -> None:
    """A seat reading a body counts as receiving until it is over, then for ``LEASE`` more
    (the next item's first bytes come meanwhile); a dead one's slot is cleared; one told of
    a lease of none no longer counts."""
    shares = Shares(3)
    seat, item, other = shares.share(0), shares.share(1), shares.share(2)
    url = "http://mirror/a.bin"
    assert not item.others_receiving(url)
    seat.receive(url, lease=None)
    assert item.others_receiving(url) and other.others_receiving(url)
    assert not seat.others_receiving(url)  # its own lanes are its own download's concern
    assert not item.others_receiving("http://elsewhere/a.bin")
    seat.received()
    assert item.others_receiving(url)  # within its lease
    seat.receive(url, lease=0.0)
    assert not item.others_receiving(url)
    seat.receive(url, lease=None)
    seat.clear()
    assert not item.others_receiving(url)


def test_a_first_request_under_way_counts_until_it_is_answered() -> None:
    """A probe's first request (``Receiving.ask``) counts for the rest of its batch as if it
    received, until it is answered: refused (it asks no more, and hears whether another
    receives or asks), failed otherwise (the same), or let in (a lease, until it says it
    receives). Its retries never ask: refused ones do not keep each other waiting."""
    shares = Shares(3)
    first, second, other = (Receiving(shares.share(n)) for n in range(3))
    url = "http://mirror/a.bin"
    first.ask(url)
    second.ask(url)
    assert other.elsewhere(url) and first.elsewhere(url) and second.elsewhere(url)
    assert first.refused(url)  # the second one's request is still under way
    assert not second.refused(url)  # the first one asks no more: nobody holds a room
    assert not other.elsewhere(url)
    second.answered(ok=False)  # its retries' failures: nothing more to end
    assert not other.elsewhere(url)
    first.ask(url)
    first.answered(ok=False)  # a failure of another kind ends it too
    assert not other.elsewhere(url)
    first.ask(url)
    first.answered(ok=True)  # let in: a lease, until it says it receives
    assert other.elsewhere(url)
    assert not Receiving(None).refused(url)  # not a batch's: nobody else


def test_lanes_asking_for_the_first_time_count_as_receiving() -> None:
    """A coordinator whose lanes have received nothing yet, but one of which asks for the
    first time, says so to its batch (a lease renewed at each look)."""
    shares = Shares(2)
    item, other = Receiving(shares.share(0)), Receiving(shares.share(1))
    url = "http://mirror/a.bin"
    item.lanes(_Lanes(0, False), url)
    assert not other.elsewhere(url)
    item.lanes(_Lanes(0, True), url)
    assert other.elsewhere(url)


class _Lanes(NamedTuple):
    """A download's lanes as ``Receiving.lanes`` reads them."""

    bytes_in: int
    asking_now: bool

    def received(self) -> int:
        return self.bytes_in

    def asking(self) -> bool:
        return self.asking_now
