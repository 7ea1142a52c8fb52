"""Asking a Dask cluster's workers, each within a time limit; and the check that the
scheduler and every worker run this blobdl before any task of ours reaches them.

``Client.run`` waits for every worker's answer, and a worker that gives none (stopped,
swapping, its machine gone without a word: the scheduler counts it until its heartbeats have
been missed for minutes) would hold the caller for ever. So each worker is asked on its own,
all at once on the client's event loop, and one silent for ``within`` seconds is named.

A task that reaches a worker without blobdl kills that worker (Dask cannot read the task
off its stream), and the run would wait for another for ever; a worker with another blobdl
would run other code; a scheduler without blobdl fails every task (it reads them). Each is
named before anything is submitted.

The scheduler itself is asked within the same limit (``on_scheduler``): one stopped mid-run
keeps its connection open too, and Dask's own questions (``Client.processing``,
``scheduler_info``) would wait for its answer for ever.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from .._said import escaped
from .._version import __version__, version
from ..errors import ClusterError

log = logging.getLogger("blobdl")


class Silent(NamedTuple):
    """The answer of a worker that gave none in time."""

    within: float  # the seconds it was given


class Workers(NamedTuple):
    """The cluster's workers as a run found them."""

    names: dict[str, str]  # {address: name}
    silent: list[str]  # the addresses of those that did not answer in time
    within: float

    def unanswered(self) -> ClusterError:
        """The error that names the workers that did not answer."""
        which = ", ".join(self.names[a] for a in self.silent)
        plural = "s" if len(self.silent) > 1 else ""
        return ClusterError(
            f"worker{plural} {which} of the Dask cluster did not answer within {self.within:g} s"
        )


def ask(
    client: Any,
    fn: Callable[..., Any],
    *args: Any,
    within: float,
    workers: list[str] | None = None,
) -> dict[str, Any]:
    """{worker address: what ``fn(*args)`` returned there, the exception it raised there,
    or ``Silent``}, for every worker of the cluster (or those of ``workers``)."""
    addresses = list(present(client, within=within)) if workers is None else workers

    async def one(address: str) -> Any:
        running = client.run(fn, *args, workers=[address], on_error="return", asynchronous=True)
        try:
            answers = await asyncio.wait_for(running, within)
        except TimeoutError:
            return Silent(within)
        return answers.get(address, Silent(within))  # it left meanwhile

    async def every() -> dict[str, Any]:
        return dict(zip(addresses, await asyncio.gather(*map(one, addresses)), strict=True))

    answers: dict[str, Any] = client.sync(every)
    return answers


def on_scheduler(client: Any, question: str, *, within: float, **kwargs: Any) -> Any:
    """The scheduler's answer to ``question`` (one of its handlers, with ``kwargs``); a
    ClusterError naming it if it gives none within ``within`` seconds."""
    try:
        return client.sync(getattr(client.scheduler, question), callback_timeout=within, **kwargs)
    except TimeoutError:
        raise scheduler_silent(client, within) from None


def scheduler_silent(client: Any, within: float) -> ClusterError:
    """The error of a scheduler that did not answer: nothing of the run can go on."""
    address = client.scheduler.address
    return ClusterError(f"the Dask scheduler at {address} did not answer within {within:g} s")


def present(client: Any, *, within: float) -> dict[str, Any]:
    """{address: what the scheduler knows of it} for each worker of the cluster."""
    workers: dict[str, Any] = on_scheduler(client, "identity", within=within, n_workers=-1)[
        "workers"
    ]
    return workers


def names(client: Any, *, within: float) -> dict[str, str]:
    """{address: name} of the cluster's workers (a worker without a name: its address)."""
    workers = present(client, within=within)
    return {address: str(w.get("name", address)) for address, w in workers.items()}


def holding(client: Any, keys: set[str], *, within: float) -> dict[str, list[str]]:
    """{worker address: those of ``keys`` the scheduler has given it (running, or queued
    there)}, for each worker that holds any."""
    held: dict[str, list[str]] = {}
    for address, there in on_scheduler(client, "processing", within=within).items():
        ours = [key for key in there if key in keys]
        if ours:
            held[address] = ours
    return held


def silent_among(client: Any, addresses: list[str], within: float) -> list[str]:
    """Those of the workers at ``addresses`` that do not answer within ``within`` seconds."""
    answers = ask(client, version, within=within, workers=addresses)
    return [address for address, answer in answers.items() if isinstance(answer, Silent)]


def checked(client: Any, within: float) -> Workers:
    """The cluster's workers, once the scheduler and each worker that answers run this
    blobdl; a ClusterError naming each that does not (it cannot import blobdl, or has
    another version)."""
    scheduler = _scheduler_version(client, within)  # first: asking a worker goes through it
    answers = ask(client, version, within=within)
    known = names(client, within=within)
    named = {address: known.get(address, address) for address in answers}
    wrong = sorted(_wrong(f"worker {named[a]}", answer) for a, answer in answers.items())
    wrong.insert(0, _wrong("the scheduler", scheduler))
    if any(wrong):
        said = "; ".join(w for w in wrong if w)
        raise ClusterError(f"the Dask cluster must run this blobdl ({__version__}): {said}")
    silent = [a for a, answer in answers.items() if isinstance(answer, Silent)]
    return Workers(named, silent, within)


def said_if_silent(workers: Workers) -> None:
    """A batch or a pull on one worker goes on without the workers that did not answer
    (the run gives them nothing: ``Run.silent``), and says so."""
    if workers.silent:
        log.warning("%s: the run goes on without it", workers.unanswered())


def _scheduler_version(client: Any, within: float) -> Any:
    """The scheduler's blobdl version, or why it has none: it reads every task's function
    and arguments (ours), and fails them all if it cannot. One that does not answer within
    ``within`` seconds (stopped, swapping: the connection stays open) is a ClusterError:
    nothing of the run can go on without it."""
    try:
        return client.run_on_scheduler(version, callback_timeout=within)
    except TimeoutError:
        raise scheduler_silent(client, within) from None
    except Exception as exc:
        return exc


def _wrong(who: str, answer: Any) -> str:
    """What is wrong with the blobdl of ``who`` ("" if nothing is, or it did not answer)."""
    if isinstance(answer, BaseException):
        return f"{who} cannot import it ({_words(answer)})"
    if isinstance(answer, str) and answer != __version__:
        return f"{who} runs blobdl {escaped(answer, 40)}"  # a worker's own text
    return ""


# How Dask hands back an exception raised on a worker: a plain Exception whose text is the
# original's repr, ModuleNotFoundError("No module named 'blobdl'").
_REPR = re.compile(r"""[A-Za-z_][\w.]*\((['"])(.+)\1\)""", re.DOTALL)


def _words(error: BaseException) -> str:
    """The error's own words ("No module named 'blobdl'"), not its class's name."""
    text = str(error)
    found = _REPR.fullmatch(text)
    return escaped(found.group(2) if found else text) or type(error).__name__
