"""When two looks at a remote see the same blob, as a table: ``change`` (a resume keeps
its partial unless a change is shown) and ``proven_same`` (a rerun keeps a finished file
only if sameness is shown)."""

from __future__ import annotations

import pytest

from blobdl.http._remote import Identity, Remote, change, lasting, proven_same

LM, LATER = "Mon, 01 Jan 2024 00:00:00 GMT", "Tue, 02 Jan 2024 00:00:00 GMT"


@pytest.mark.parametrize(
    ("before", "after", "same"),
    [
        (Identity(10, '"a"', LM), Identity(10, '"a"', LM), True),
        (Identity(10, '"a"', None), Identity(10, '"a"', None), True),  # a strong ETag
        (Identity(10, '"a"', LM), Identity(10, '"a"', LATER), False),  # any change shows
        (Identity(10, None, LM), Identity(10, None, LM), True),  # else Last-Modified
        (Identity(10, '"a"', LM), Identity(10, None, LM), True),
        (Identity(10, 'W/"a"', LM), Identity(10, 'W/"a"', LM), True),
        (Identity(10, 'W/"a"', None), Identity(10, 'W/"a"', None), False),  # weak: no vouch
        (Identity(10, '"a"', LM), Identity(10, '"b"', LM), False),  # an ETag shows a change
        (Identity(10, None, LM), Identity(10, None, LATER), False),
        (Identity(10, '"a"', LM), Identity(11, '"a"', LM), False),  # another size
        (Identity(None, '"a"', LM), Identity(None, '"a"', LM), False),  # no size known
        (Identity(10, None, None), Identity(10, None, None), False),  # nothing to compare
        (Identity(10, '"a"', None), Identity(10, None, LM), False),
        (Identity(10, '"a"', None), Identity(10, 'W/"a"', None), False),  # turned weak
        (Identity(10, 'W/"a"', None), Identity(10, '"a"', None), False),
        (Identity(10, '"a"', LM), Identity(10, 'W/"a"', LM), True),  # the Last-Modified does
    ],
)
def test_only_a_shown_sameness_is_the_same_blob(
    before: Identity, after: Identity, same: bool
) -> None:
    assert proven_same(before, after) is same
    if same:  # what is shown the same is never a change either
        assert change(before, after) is None


@pytest.mark.parametrize(
    ("before", "after", "changed"),
    [
        ('"a"', 'W/"a"', False),  # the same tag, turned weak (an edge that may transform)
        ('W/"a"', '"a"', False),
        ('W/"a"', 'W/"a"', False),
        ('W/"a"', 'W/"b"', True),  # another tag, weak or not, is another blob
        ('"a"', 'W/"b"', True),
        ('"a"', '"b"', True),
        ('"a"', None, False),  # one that disappears proves nothing
    ],
)
def test_etags_are_compared_weakly_for_a_change(
    before: str, after: str | None, changed: bool
) -> None:
    shown = change(Identity(10, before, LM), Identity(10, after, LM))
    assert (shown is not None) is changed
    if changed:
        assert shown == f"ETag changed from {before} to {after}"


@pytest.mark.parametrize(
    ("date", "kept"),
    [
        ("Mon, 01 Jan 2024 00:00:01 GMT", True),  # a second after it: nothing changes unseen
        ("Mon, 01 Jan 2024 00:00:00 GMT", False),  # served in the second it was modified
        ("Sun, 31 Dec 2023 23:00:00 GMT", False),  # before it (a clock ahead): the same
        (None, False),  # no Date, no telling
        ("not a date", False),
    ],
)
def test_a_last_modified_vouches_only_once_its_second_is_over(date: str | None, kept: bool) -> None:
    # Nor does the ETag then: nginx's and Apache's are made of the mtime in seconds and the
    # size, so a same-size rewrite within that second keeps it.
    remote = Remote("u", "u", 10, True, '"a"', LM, None, (), date=date)
    assert lasting(remote) == (Identity(10, '"a"', LM) if kept else Identity(10, None, None))


def test_an_etag_without_a_last_modified_still_vouches() -> None:
    remote = Remote("u", "u", 10, True, '"a"', None, None, (), date=None)
    assert lasting(remote) == Identity(10, '"a"', None)
