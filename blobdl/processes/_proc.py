"""Where /proc names our processes and threads.

/proc numbers processes as the pid namespace it was mounted for sees them, which need not
be ours: a container started by ``unshare --pid --fork`` without ``--mount-proc`` sees the
host's /proc, where our own pid and thread ids (``os.getpid()``,
``threading.get_native_id()``) name other processes, or none. So no /proc path is built
here from our own numbers: a thread is named as ``/proc/thread-self`` names it, a child as
its pidfd says /proc numbers it (``/proc/self`` and ``/proc/thread-self`` are right in any
namespace).
"""

from __future__ import annotations

import os


def own_thread() -> str | None:
    """The calling thread's folder in /proc (``/proc/<pid>/task/<tid>``, /proc's numbers);
    None without /proc."""
    try:
        return "/proc/" + os.readlink("/proc/thread-self")
    except OSError:
        return None


def own_thread_id() -> int:
    """The calling thread's id as /proc numbers it; 0 if not known (no /proc)."""
    folder = own_thread()
    return int(folder.rpartition("/")[2]) if folder is not None else 0


def child_folder(pidfd: int) -> str | None:
    """The folder in /proc of the process ``pidfd`` names: its pid there is the "Pid:" of the
    pidfd's fdinfo, given in /proc's own numbers. None if /proc does not show it (it has
    ended: -1; another namespace's /proc that cannot see it: 0) or cannot be read."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}") as info:
            lines = info.read().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition(":")
        if key == "Pid":
            pid = int(value)
            return f"/proc/{pid}" if pid > 0 else None
    return None


def kernel_state(task: str) -> str | None:
    """The state Linux gives the process or thread at ``task`` (a ``/proc`` folder) in its
    ``stat``: "R" running, "S" asleep, "T" stopped... None if it cannot be read (gone)."""
    try:
        with open(f"{task}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None
