"""Which failed writes on stdout mean the reader went away (said nothing, the download's
exit code) and which lose the report (said once, exit 5): ``tests/integration/test_lost_output.py``
runs them as a user does."""

from __future__ import annotations

import errno
import os

import pytest

from blobdl.cli._display import reader_went_away


@pytest.mark.parametrize(
    ("code", "terminal", "gone"),
    [
        (errno.EPIPE, False, True),  # `| head`: the reader quit
        (errno.EPIPE, True, True),
        (errno.ECONNRESET, False, True),  # a socket whose reader closed it
        (errno.EIO, True, True),  # a terminal closed under us (its hangup)
        (errno.EIO, False, False),  # a disk's I/O error: the report is lost
        (errno.ENOSPC, False, False),
        (errno.EFBIG, False, False),
        (errno.EDQUOT, False, False),
        (errno.ENOSPC, True, False),
    ],
)
def test_only_a_reader_that_quit_is_not_a_lost_report(
    code: int, terminal: bool, gone: bool
) -> None:
    assert reader_went_away(OSError(code, os.strerror(code)), terminal=terminal) is gone
