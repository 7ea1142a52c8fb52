"""A task's questions to the scheduler, asked from its worker thread without waiting on it.

Dask's own calls (``Event.is_set``, ``Semaphore.acquire``/``release``) wait for the
scheduler's answer with no bound, on the task's thread: a scheduler stopped (or swapping)
keeps its connection open, and the task would wait for ever. The task's thread also reads
its download's events (``_clean_process``): held there, it stops reading, the socket from
the download's coordinator fills, and the download stops landing bytes. So a question is
asked on the worker's event loop, within the stall timeout, and the thread either looks
later whether it was answered (``later``, never waits) or waits at most that long for it
(``answer``, where nothing is being downloaded).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def later(
    loop: Any, question: Callable[[], Awaitable[T]], within: float
) -> concurrent.futures.Future[T]:
    """``question()`` asked on ``loop`` (a tornado IOLoop, Dask's), given ``within`` seconds:
    its future ends in the answer, or in ``TimeoutError`` (or whatever the asking raised)."""

    async def asked() -> T:
        return await asyncio.wait_for(question(), within)

    return asyncio.run_coroutine_threadsafe(asked(), loop.asyncio_loop)


def answer(loop: Any, question: Callable[[], Awaitable[T]], within: float) -> T:
    """The answer to ``question()``, waited for at most about ``within`` seconds;
    ``TimeoutError`` if none came."""
    asked = later(loop, question, within)
    try:
        return asked.result(timeout=within + 1.0)  # the loop itself busy: still bounded
    except concurrent.futures.TimeoutError:
        asked.cancel()
        raise TimeoutError from None
