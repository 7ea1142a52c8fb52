"""A caller that ignores SIGCHLD (a daemon, a job runner, or a child of one: the setting
survives exec), for ``tests/integration/test_sigchld_ignored.py``.

``python -m tests.sigchld_caller REPORT MODE ...``; MODE is ``download URL OUT SETTINGS
DIGEST`` or ``many ITEMS SETTINGS`` (JSON: ``[[url, out], ...]``). Options: ``--threaded``
(a thread of the caller's runs the whole time: the call goes to a clean process),
``--reaper`` (SIGCHLD not ignored but handled: the caller reaps every child that ends),
``--kill-worker`` (once bytes arrive, a worker process of the download is killed),
``--kill-item`` (once bytes arrive, a large item's process is killed).

With SIGCHLD ignored the kernel reaps every child as it exits, and its process id is free
for the next process at once. So this caller lets ``os.kill`` through only to a process
that is still its child: any other (a pid gone, or someone else's by now) is written to
``REPORT.strays``, and not sent, at the moment it is asked for, at exit too. The outcome
goes to ``REPORT``: what the call said, and which of blobdl's processes were seen to ignore
SIGCHLD themselves.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import traceback
from typing import Any


def _reap_all(signum: int, frame: object) -> None:
    """A caller's own reaper (``--reaper``): every child that ends, whoever's."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


# Before blobdl is even imported.
signal.signal(signal.SIGCHLD, _reap_all if "--reaper" in sys.argv else signal.SIG_IGN)

import psutil  # noqa: E402

import blobdl  # noqa: E402

_real_kill = os.kill
_SIGCHLD_BIT = 1 << (signal.SIGCHLD - 1)


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _checked_kill(pid: int, sig: int) -> None:
    if pid > 0 and sig != 0 and _parent_of(pid) != os.getpid():
        with open(STRAYS, "a") as strays:
            strays.write(json.dumps({"pid": pid, "signal": sig, "where": _where()}) + "\n")
        return  # as if it reached whatever holds that pid now
    _real_kill(pid, sig)


def _where() -> str:
    return " < ".join(f"{f.name}:{f.lineno}" for f in traceback.extract_stack()[-6:-2][::-1])


def _ignoring(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            line = next(x for x in status if x.startswith("SigIgn:"))
        return bool(int(line.split()[1], 16) & _SIGCHLD_BIT)
    except (OSError, StopIteration):
        return False


class _Watcher:
    """The callback: looks at blobdl's processes, and kills one once bytes arrive."""

    def __init__(self, kill: str | None) -> None:
        self.kill, self.killed = kill, [] if kill else None
        self.ignoring: set[str] = set()

    def __call__(self, event: Any) -> None:
        inner = getattr(event, "event", event)  # a BatchEvent wraps the download's event
        if not isinstance(inner, blobdl.Progress) or inner.done == 0:
            return
        kids = psutil.Process().children(recursive=True)
        self.ignoring |= {f"{k.pid} {k.name()}" for k in kids if _ignoring(k.pid)}
        if self.killed is None or self.killed:
            return
        victim = self._victim(kids)
        if victim is not None:
            self.killed.append(victim.pid)
            _real_kill(victim.pid, signal.SIGKILL)  # the test's own kill: a live process

    def _victim(self, kids: list[psutil.Process]) -> psutil.Process | None:
        if self.kill == "worker":  # a leaf under the coordinator (not a hasher: no digest)
            leaves = [k for k in kids if not k.children()]
            return leaves[-1] if leaves else None
        # a large item's process: the scheduler's child that has children (workers) of its own
        own = [k for k in psutil.Process().children() if k.children()]
        return own[0] if own else None


def main() -> None:
    report, mode, *rest = (a for a in sys.argv[1:] if not a.startswith("--"))
    kill = (
        "worker" if "--kill-worker" in sys.argv else "item" if "--kill-item" in sys.argv else None
    )
    if "--threaded" in sys.argv:
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    watcher = _Watcher(kill)
    said: Any
    try:
        if mode == "download":
            url, out, settings, digest = rest
            blobdl.download(
                url, out, digest=digest or None, on_event=watcher, **json.loads(settings)
            )
            said = "ok"
        else:
            items, settings = rest
            results = blobdl.download_many(
                [blobdl.Item(url, out) for url, out in json.loads(items)],
                on_event=watcher,
                **json.loads(settings),
            )
            said = [None if r.ok else f"{type(r.error).__name__}: {r.error}" for r in results]
    except blobdl.BlobdlError as exc:
        said = f"{type(exc).__name__}: {exc}"
    except Exception:
        said = traceback.format_exc()
    with open(report, "w") as f:
        json.dump({"said": said, "killed": watcher.killed, "ignoring": sorted(watcher.ignoring)}, f)


STRAYS = sys.argv[1] + ".strays"
os.kill = _checked_kill

if __name__ == "__main__":
    main()
