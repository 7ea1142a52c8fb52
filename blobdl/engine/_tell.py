"""Telling the caller: the events of one download, to the callbacks it gave.

``tell_caller`` makes the one ``tell`` a download speaks to; ``failures_told`` is the story's
boundary, where a failure (or the signal that stopped it) is told as ``Failed`` before it
is raised to the caller.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from .._redact import redact_url
from ..errors import BlobdlError
from ..events import Event, EventCallback, Failed, Progress, ProgressCallback
from ..processes._signals import Stop, held, interrupted

log = logging.getLogger("blobdl")


def tell_caller(
    on_progress: ProgressCallback | None, on_event: EventCallback | None
) -> EventCallback:
    """One ``tell`` for the coordinator, fanning out to the callbacks the caller gave."""

    def tell(event: Event) -> None:
        if on_event is not None:
            on_event(event)
        if on_progress is not None and isinstance(event, Progress):
            on_progress(event)

    return tell


def ignore(event: Event) -> None:
    """The ``tell`` of a caller who gave no callback."""


@contextlib.contextmanager
def failures_told(
    tell: EventCallback, url: str, path: str | os.PathLike[str] | None
) -> Iterator[None]:
    """A ``BlobdlError`` out of the block is told as ``Failed``, then raised on; a signal
    (``Stop``) is raised as the caller hears of it, ``Interrupted``, told the same way."""
    try:
        yield
    except Stop as stop:  # the signal, as the caller hears of it
        error = interrupted(stop)
        tell_failed(tell, url, path, error)
        raise error from None
    except BlobdlError as exc:
        tell_failed(tell, url, path, exc)
        raise


def failed(url: str, path: str | os.PathLike[str] | None, error: BlobdlError) -> Failed:
    """The event that says ``error`` ended the download of ``url`` to ``path``: its URL
    shown without credentials, its path as given ("" for none yet)."""
    return Failed(redact_url(url), os.fspath(path or ""), str(error), error.exit_code)


def tell_failed(
    tell: EventCallback, url: str, path: str | os.PathLike[str] | None, error: BlobdlError
) -> None:
    """Tell a failure: neither a raising callback nor a second signal may replace the error
    being raised (``failures_told``'s, and a batch pool's for an item's unexpected error)."""
    with held(drop=True):
        try:
            tell(failed(url, path, error))
        except Exception as exc:
            log.warning("the event callback raised %r while a failure was reported", exc)
