"""What a download tells its caller: typed, immutable events and the final result.

Callbacks get them in the calling process (``on_event`` gets every kind, ``on_progress``
only ``Progress``); the CLI's ``--json`` stream carries the same events, one per line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from ._redact import redact_url


@dataclasses.dataclass(frozen=True)
class DownloadResult:
    path: Path  # where the blob now is
    size: int  # its size in bytes
    elapsed: float  # seconds, probe included
    bytes_fetched: int  # body bytes received this run, retried and refetched bytes included
    retries: int  # failed attempts that were retried
    parts: int  # parts the blob was planned in
    url: str  # as asked
    final_url: str  # after redirects ("" when nothing had to be fetched)
    steals: int = 0  # ranges taken over from slow lanes or split off large ones
    resumed: int = 0  # bytes already on disk from an earlier, interrupted run
    verified: bool = False  # the bytes matched the digest that was given
    cached: bool = False  # served from the cache directory without a download
    # Body bytes read off the wire this run, kept or not: bytes_fetched plus any the
    # workers read and could not keep. What the server sent can be a little more still:
    # bytes in flight on a connection that was cut (a failure or a stalled lane).
    bytes_received: int = 0


class PartProgress(NamedTuple):
    part: int  # the part's slot in the counter table
    start: int  # first byte of the part
    end: int  # one past its last byte (-1 while the size is unknown)
    done: int  # bytes of the part on disk
    state: str  # "pending", "running", "waiting" (backing off) or "done"
    attempts: int  # requests started for this part so far


class Started(NamedTuple):
    url: str
    path: str  # the destination
    size: int | None  # None: the server did not say
    parts: int  # parts planned
    resumed: int  # bytes already on disk from an earlier run


class Progress(NamedTuple):
    done: int  # bytes of the blob on disk
    total: int | None  # the blob's size (None: the server did not say)
    rate: float  # bytes per second over the last few seconds
    elapsed: float  # seconds since the parts started
    active: int  # parts with a worker running now
    retries: int  # failed attempts retried so far, all parts
    parts: tuple[PartProgress, ...]


class PartRetried(NamedTuple):
    part: int
    failures: int  # failures in a row without progress, this one included
    delay: float  # seconds until the next attempt
    error: str  # what went wrong


class PartStalled(NamedTuple):
    part: int
    seconds: float  # how long it went without a byte


class Finished(NamedTuple):
    result: DownloadResult


class Failed(NamedTuple):
    url: str
    path: str
    error: str
    exit_code: int


Event = Started | Progress | PartRetried | PartStalled | Finished | Failed
EventCallback = Callable[[Event], None]
ProgressCallback = Callable[[Progress], None]


def event_name(event: Event) -> str:
    """``PartRetried`` -> ``"part_retried"``: the ``event`` field of a JSON line."""
    name = type(event).__name__
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def event_record(event: Event) -> dict[str, object]:
    """A JSON-ready dict of the event."""
    if isinstance(event, Finished):
        body = dataclasses.asdict(event.result)
        body["path"] = str(event.result.path)
    elif isinstance(event, Progress):
        body = event._asdict()
        body["parts"] = [part._asdict() for part in event.parts]
        body["rate"] = round(event.rate, 1)
        body["elapsed"] = round(event.elapsed, 3)
    else:
        body = event._asdict()
    for name in ("url", "final_url"):  # a record may be logged: no credential in it
        if isinstance(body.get(name), str):
            body[name] = redact_url(str(body[name]))
    return {"event": event_name(event), **body}
