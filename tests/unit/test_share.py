"""Who of a batch receives from which origin: the slots of its ``Shares``, and the pure
decision a refused download asks of them."""

from __future__ import annotations

import pytest

from blobdl.engine._share import Shares, origin_key, receiving_elsewhere

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
