"""A threaded batch job calling blobdl as a hostile caller would (the lib5 review): a
callback's own KeyboardInterrupt, batches side by side sharing destinations."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import blobdl
from blobdl import Item
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings

Make = Callable[..., Blob]


def _in_a_thread(call: Callable[[], Any]) -> BaseException | None:
    """What ``call`` raised in a thread of its own (the caller is threaded: a clean process)."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # the test looks at whatever it was
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    return raised[0] if raised else None


@pytest.mark.parametrize("many", [False, True], ids=["download", "download_many"])
def test_a_threaded_callers_callback_raising_keyboardinterrupt_gets_it_back_unchanged(
    make: Make, server: ServerHandle, tmp_path: Path, many: bool
) -> None:
    # No signal reaches a thread other than the main one: a KeyboardInterrupt there is the
    # callback's own (a job that cancels so), and comes back as it does to a caller without
    # threads, never made a SIGINT ``Interrupted`` no signal sent.
    blob = make(4 * PART, seed=79500)
    own = KeyboardInterrupt("the job's own cancel")

    def cancel(event: Any) -> None:
        if isinstance(getattr(event, "event", event), blobdl.Started):
            raise own

    settings = fast_settings()
    path = str(tmp_path / "out")
    if many:
        raised = _in_a_thread(
            lambda: blobdl.download_many([Item(blob.url, path)], on_event=cancel, settings=settings)
        )
    else:
        raised = _in_a_thread(
            lambda: blobdl.download(blob.url, path, on_event=cancel, settings=settings)
        )
    assert type(raised) is KeyboardInterrupt and raised.args == own.args, repr(raised)
    assert not (tmp_path / "out").exists()
