"""What the scheduler waits on, in one selector: the signals' wake-up socket, each seat's
pipe and each pool process's sentinel, each large item's pipe. What is ready is named as
``("seat", seat)``, ``("pool", process)`` or ``("item", index)``."""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from types import TracebackType

from ..processes._signals import Interrupts
from ._pool import Pool


class Watch:
    """The scheduler's selector: registered here, and only here."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.wakers: list[socket.socket] = []  # ready once a signal arrived
        self.waited = 0.0  # seconds the last ``ready`` waited for news (``_beats``)

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.selector.close()

    def signals(self, interrupts: Interrupts) -> None:
        """A signal wakes the wait (the run's loop then checks for it)."""
        self.wakers = interrupts.waitables()
        for waitable in self.wakers:
            self.selector.register(waitable, selectors.EVENT_READ, None)

    def pool(self, pool: Pool) -> None:
        """Every seat's pipe (of those that started), then every pool process's sentinel."""
        for seat in range(len(pool.pipes)):
            if seat not in pool.unstarted:
                self.selector.register(pool.pipes[seat], selectors.EVENT_READ, ("seat", seat))
        for number, proc in enumerate(pool.procs):
            self.selector.register(proc.sentinel, selectors.EVENT_READ, ("pool", number))

    def process(self, pool: Pool, number: int) -> None:
        """Pool process ``number`` (forked again): its seats' pipes (of those that started)
        and its sentinel."""
        for seat in pool.ranges[number]:
            if seat not in pool.unstarted:
                self.selector.register(pool.pipes[seat], selectors.EVENT_READ, ("seat", seat))
        sentinel = pool.procs[number].sentinel
        self.selector.register(sentinel, selectors.EVENT_READ, ("pool", number))

    def item(self, index: int, conn: Connection) -> None:
        self.selector.register(conn, selectors.EVENT_READ, ("item", index))

    def forget(self, waitable: Connection | socket.socket | int) -> None:
        self.selector.unregister(waitable)

    def forget_seat(self, pipe: Connection) -> None:
        """A seat's pipe, unless it is gone already (unregistered at its EOF)."""
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(pipe)

    def forget_seats(self, pool: Pool) -> None:
        """The pool ends: its seats' pipes, those still here (its processes' sentinels stay,
        until each has ended). A pipe closed already is of a process reaped for good (it
        died): unregistered then."""
        for pipe in pool.pipes:
            if not pipe.closed:
                self.forget_seat(pipe)

    def ready(self, timeout: float | None = None) -> Iterator[tuple[str, int]]:
        """What seats, pool processes and children have to say, once at least one said
        something (or a signal arrived, or ``timeout`` seconds passed), checked as each is
        handled."""
        start = time.monotonic()
        events = self.selector.select(timeout)
        self.waited = time.monotonic() - start
        for key, _ in events:
            if key.data is None:
                continue  # a signal: the loop checks for it
            if self.selector.get_map().get(key.fd) is not key:
                # Its registration is gone since the select (a pool process that died was
                # forked again: its old pipes and sentinel are not the ones there now).
                continue
            yield key.data
