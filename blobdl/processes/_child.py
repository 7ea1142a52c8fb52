"""A child process as its parent waits for, judges and signals it: ``Forked`` (by
multiprocessing) or ``Execed`` (a fresh interpreter), both ``Child``.

A caller may ignore SIGCHLD (daemons, some job runners, and whatever they start: the
setting survives exec) or reap every child itself. The kernel (or the caller) then reaps our
child the moment it exits: ``waitpid`` fails with ECHILD, its exit status is gone for good,
and its process id is free for the next process the machine starts. So a child is not
judged by its exit code alone: its pidfd (Linux 5.4+) reads as ready once it has ended,
however it was reaped, and it is reaped and signalled through that pidfd: exactly this
process, never whoever holds its old pid now (a wait by pid would reap that one, another
child of the caller's, and take its exit code for ours). ``exitcode`` is then None though
it has ended (``ended``): nobody can know how it ended. Where the kernel has no pidfd
(before 5.4, or a seccomp profile that predates it), its sentinel says it ended, and it is
reaped and signalled by pid while not yet seen to end: exact while SIGCHLD is at its
default (the zombie holds the pid until we reap it), best effort where it is ignored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import weakref
from multiprocessing import process
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Protocol

from ._proc import child_folder


class Child(Protocol):
    """A child process as its parent waits for it."""

    @property
    def pid(self) -> int: ...

    @property
    def sentinel(self) -> int: ...

    @property
    def exitcode(self) -> int | None: ...

    @property
    def ended(self) -> bool: ...

    def join(self, timeout: float | None = None) -> None: ...

    def signal(self, signum: int) -> None: ...

    def kill(self) -> None: ...

    def folder(self) -> str | None: ...


class _Watched:
    """What both kinds share: the pidfd, whether the child has ended, and its exit code
    if anyone can know it. A subclass says how its exit status is read (``_reaped``)."""

    def __init__(self, pid: int, sentinel: int) -> None:
        self.pid, self.sentinel = pid, sentinel
        self._code: int | None = None
        self._ended = False
        self._pidfd = _pidfd_of_child(pid)
        # The pidfd goes once it has ended, or with this handle (closed once, either way).
        fd = self._pidfd if self._pidfd is not None else -1
        self._release = weakref.finalize(self, _close, fd)
        _open.add(self)
        _made.add(self)
        if self._pidfd is None:  # it ended, and was reaped, before we could look
            self._ended = True
            self._let_go()

    @property
    def exitcode(self) -> int | None:
        """How it ended (-N: by signal N); None while it runs, or if nobody can know."""
        self._look()
        return self._code

    @property
    def ended(self) -> bool:
        return self._look()

    def is_alive(self) -> bool:
        return not self._look()

    def signal(self, signum: int) -> None:
        """Send ``signum`` to this process, if it has not ended (nothing otherwise)."""
        if self._look():
            return
        with contextlib.suppress(ProcessLookupError):  # it has just ended
            if (pidfd := self._usable_pidfd()) is not None:
                signal.pidfd_send_signal(pidfd, signum)
            else:
                os.kill(self.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def folder(self) -> str | None:
        """Its folder in /proc, by /proc's own numbers (``_proc``: they may be another pid
        namespace's); None once it has ended, or where that /proc cannot see it. Without a
        pidfd, /proc is taken to be ours (nothing else can be known)."""
        if self._ended:
            return None
        if (pidfd := self._usable_pidfd()) is not None:
            return child_folder(pidfd)
        return f"/proc/{self.pid}"

    def _wait(self, timeout: float | None) -> None:
        """Wait (at most ``timeout`` seconds) until it has ended."""
        if self._look():
            return
        ready = self._ready()
        if ready >= 0:
            wait([ready], timeout)
        elif timeout is None:
            self._reaped(block=True)
        self._look()

    def _look(self) -> bool:
        """Whether it has ended; its exit code noted if it can be read (reaped here)."""
        if self._ended:
            return True
        self._code = self._reaped(block=False)
        # Its status first, then whether it is gone: it may end between the two. Gone, it
        # is reaped at once (a sentinel reads as ready as the process closes its files, a
        # moment before it is a zombie): none is left behind, and where SIGCHLD is ignored
        # the wait fails at once, its status lost.
        if self._code is None and self._gone():
            self._code = self._reaped(block=True)
            self._ended = True
        elif self._code is not None:
            self._ended = True
        if self._ended:
            self._let_go()
        return self._ended

    def _gone(self) -> bool:
        """Whether it has ended, reaped or not (its pidfd, else its sentinel, is ready)."""
        ready = self._ready()
        return ready >= 0 and bool(wait([ready], 0))

    def _usable_pidfd(self) -> int | None:
        """Its pidfd, while it has one open (None: none, or let go)."""
        return self._pidfd if self._pidfd is not None and self._pidfd >= 0 else None

    def _ready(self) -> int:
        """What reads as ready once it has ended: its pidfd, else its sentinel (-1: none)."""
        pidfd = self._usable_pidfd()
        return pidfd if pidfd is not None else self.sentinel

    def _let_go(self) -> None:
        self._release()
        self._pidfd = -1
        _open.discard(self)

    def _reaped(self, block: bool) -> int | None:
        """Its exit code if known, or read now (it is reaped here); None while it runs, or if
        it was reaped by someone else. Through its pidfd where it has one: exactly this
        process, however its pid has been handed on since."""
        code, pidfd = self._known(), self._usable_pidfd()
        if code is not None or pidfd is None:
            return code if code is not None else self._reaped_by_pid(block)
        try:
            info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | (0 if block else os.WNOHANG))
        except ChildProcessError:  # reaped already: by the kernel (SIGCHLD ignored), or else
            return None
        if info is None:  # running
            return None
        code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        self._note(code)
        return code

    def _known(self) -> int | None:
        """Its exit code as its process object has it (None: not known there)."""
        raise NotImplementedError

    def _note(self, code: int) -> None:
        """Its exit code, read through the pidfd, told to its process object."""
        raise NotImplementedError

    def _reaped_by_pid(self, block: bool) -> int | None:
        raise NotImplementedError

    def _drop_pipes(self) -> None:
        """In a child forked later: close the pipe ends its parent holds for this child."""
        raise NotImplementedError


# Every handle whose pidfd may be open: a pidfd is closed on exec, not on fork, so each
# child forked later would inherit it (``close_inherited``).
_open: weakref.WeakSet[_Watched] = weakref.WeakSet()
# Every handle: each holds pipe ends (its sentinel...) until it is collected, ended or not.
_made: weakref.WeakSet[_Watched] = weakref.WeakSet()


def close_inherited() -> None:
    """In a child just forked: close the pidfds and pipe ends its parent holds for its other
    children, which it inherited (descriptors it has no use for; a pidfd is a way to signal
    them; and a sibling's ``parent_sentinel`` would not read EOF when their parent dies,
    while this child holds its other end). Their handles here are its parent's, never
    used: each lets go at once, so that none closes that number again later, when it may
    be another descriptor's."""
    for watched in list(_open):
        watched._release()
        watched._pidfd = -1
    _open.clear()
    for watched in list(_made):
        watched._drop_pipes()
    _made.clear()


class Forked(_Watched):
    """A child forked by multiprocessing (``_spawn.start``): the process, watched."""

    def __init__(self, proc: BaseProcess) -> None:
        assert proc.pid is not None, "started"
        self.proc, self.name = proc, proc.name
        # Off multiprocessing's list of its children: it polls each one there by pid as it
        # starts another process (any caller's), and would reap whoever holds that pid
        # once ours is reaped elsewhere; at the interpreter's exit it would SIGTERM ours
        # by pid (a daemon) or wait for it. This handle alone waits for it; it dies with
        # us (``_spawn.child_setup``).
        process._children.discard(proc)  # type: ignore[attr-defined]
        super().__init__(proc.pid, proc.sentinel)

    def join(self, timeout: float | None = None) -> None:
        """Wait (at most ``timeout`` seconds) for it to end. A Ctrl-C cuts the wait short,
        as multiprocessing's own."""
        self._wait(timeout)

    def _drop_pipes(self) -> None:
        # multiprocessing's two (sentinel, and the write end of the child's parent_sentinel),
        # held by the finalizer that closes them; not yet run (its arguments still there), so
        # open. Our finalizers were forgotten as this child started: it never runs here.
        finalizer = getattr(getattr(self.proc, "_popen", None), "finalizer", None)
        ends = getattr(finalizer, "_args", None)
        if ends:
            for fd in ends:
                _close(fd)
            finalizer._args = None  # type: ignore[union-attr]

    def _known(self) -> int | None:
        popen = getattr(self.proc, "_popen", None)  # ``exitcode`` would waitpid by pid
        return getattr(popen, "returncode", None)

    def _note(self, code: int) -> None:
        # multiprocessing's own, so that it never waits for it by pid
        self.proc._popen.returncode = code  # type: ignore[attr-defined]

    def _reaped_by_pid(self, block: bool) -> int | None:
        code = self.proc.exitcode  # multiprocessing's waitpid (never blocks here)
        if block and code is None:
            self.proc.join()
            code = self.proc.exitcode
        return code


class Execed(_Watched):
    """A child started by exec (``_spawn.start_clean``): its ``Popen``, watched; its
    ``sentinel`` a pipe whose other end only it (and what it forks) holds, if it was
    given one (else -1)."""

    def __init__(self, proc: subprocess.Popen[bytes], sentinel: int = -1) -> None:
        self.proc = proc
        super().__init__(proc.pid, sentinel)

    def join(self, timeout: float | None = None) -> None:
        """Wait (at most ``timeout`` seconds) for it to end, then let its sentinel go. A
        Ctrl-C meanwhile does not cut the wait short: the child has been told to stop
        already, or is ending of itself."""
        while True:
            try:
                self._wait(timeout)
                break
            except KeyboardInterrupt:
                continue
        if self.ended and self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1

    def _drop_pipes(self) -> None:
        if self.sentinel >= 0:  # open until it is seen to end (``join``)
            _close(self.sentinel)
            self.sentinel = -1

    # Popen's poll() and wait() hold a lock of the Popen while they wait: a Ctrl-C raised
    # in there (twice, fast) can leave it held, and the next wait() then hangs for ever.
    # Ours hold none: waitid or waitpid itself, the exit code written down for the rest of Popen.
    def _known(self) -> int | None:
        return self.proc.returncode

    def _note(self, code: int) -> None:
        self.proc.returncode = code

    def _reaped_by_pid(self, block: bool) -> int | None:
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped already: by the kernel (SIGCHLD ignored), or else
            return None
        if pid == 0:
            return None
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return self.proc.returncode


def _pidfd_of_child(pid: int) -> int | None:
    """A pidfd for our child ``pid``, checked to be that child: -1 if the kernel has none
    to give (or cannot wait through it: Linux 5.3), None if the child has ended and been
    reaped already (its pid may be someone else's by now). Where SIGCHLD is ignored, a
    child that ends at once is reaped before we ask, and its pid may go to another process:
    the pidfd names whoever has it, so the kernel is asked whether that is our child, not
    yet reaped (waitid, leaving it as it is). /proc is not: in a pid namespace it may be
    another namespace's, its numbers not ours."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    except (OSError, AttributeError):  # ENOSYS, EPERM (seccomp), or not Linux
        return -1
    try:
        os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return fd  # ours: running, or ended and not reaped
    except ChildProcessError:  # not (or no longer) a child of ours: ours was reaped
        _close(fd)
        return None
    except (OSError, AttributeError):  # EINVAL: no waitid on a pidfd before Linux 5.4
        _close(fd)
        return -1


def _close(fd: int) -> None:
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        os.close(fd)
