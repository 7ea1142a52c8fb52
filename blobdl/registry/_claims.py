"""Who is using a blob of the store: lock files in ``blobs-partial/``, one pair per blob.

- ``sha256-<hex>.claim``: held *shared* by every pull that needs the blob, from before it
  looks for the blob until its manifest is in place and the blob checked present. Whoever
  deletes blobs (a moved tag, ``blobdl prune``) takes the claims *exclusively without
  waiting*, then reads the manifests, and leaves alone every blob whose claim it could not
  take: a running pull holds it.
- ``sha256-<hex>.pull-lock``: exclusive, held by the one pull that fetches the blob; another
  pull that needs it waits, then finds it in ``blobs/``. Never held while waiting for
  another one, so two pulls never wait on each other.

The kernel drops a lock when its holder dies. A lock file does not outlive its last holder:
on release, a holder that can lock it exclusively without waiting is alone, and unlinks it
while holding it; whoever locks a file checks that it is still the one at the name (it may
have been unlinked meanwhile) and tries again if not.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import DestinationLocked
from ..processes._signals import held
from ..store._files import (
    Holder,
    forget_held,
    note_held,
    open_own,
    still_at,
    take_lock,
    take_lock_not_ours,
)
from ._oci import Blob
from ._owner import Owner

CLAIM_SUFFIX = ".claim"
FETCH_SUFFIX = ".pull-lock"


class Claims:
    """The claims and fetch locks of one store's ``blobs-partial/``, made as ``owner``'s."""

    def __init__(self, partial: Path, owner: Owner) -> None:
        self.partial, self.owner = partial, owner

    @contextlib.contextmanager
    def shared(self, blobs: Iterable[Blob]) -> Iterator[None]:
        """Hold every blob's claim, shared, for the block: nobody deletes them meanwhile."""
        held = [LockFile(self.claim_path(b.hex), self.owner) for b in sorted(set(blobs))]
        try:
            for lock in held:
                lock.take(shared=True, wait=True)
            yield
        finally:
            for lock in held:
                lock.release()

    def fetching(self, blob: Blob, wait: bool) -> contextlib.AbstractContextManager[bool]:
        """The right to fetch ``blob``; yields False (not waiting) if another pull has it."""
        return locked(self._fetch_path(blob), shared=False, wait=wait, owner=self.owner)

    def fetch_lock(self, blob: Blob) -> LockFile:
        """The right to fetch ``blob``, to take and let go of by hand (``fetching``)."""
        return LockFile(self._fetch_path(blob), self.owner)

    def sweep(self, present: Iterable[Blob]) -> None:
        """Remove the fetch locks that pulls killed while they held them left beside blobs
        now ``present``: each taken without waiting (a running pull's is left alone) and
        let go, which unlinks a lock nobody else holds."""
        for blob in present:
            if os.path.lexists(self._fetch_path(blob)):
                with self.fetching(blob, wait=False):
                    pass

    def exclusive(
        self, digest: str, look_only: bool = False
    ) -> contextlib.AbstractContextManager[bool]:
        """The right to delete a blob: yields False (not waiting) while a pull claims it."""
        return locked(self.claim_path(digest[7:]), shared=False, wait=False, owner=self.owner,
                      look_only=look_only)  # fmt: skip

    def claim_path(self, hexdigest: str) -> Path:
        return self.partial / f"sha256-{hexdigest}{CLAIM_SUFFIX}"

    def _fetch_path(self, blob: Blob) -> Path:
        return self.partial / f"sha256-{blob.hex}{FETCH_SUFFIX}"


class LockFile:
    """An flock on ``path``; ``look_only`` (a dry run) neither creates nor removes it."""

    def __init__(self, path: Path, owner: Owner = None, *, look_only: bool = False) -> None:
        self.path, self.owner, self.look_only = path, owner, look_only
        self.fd: int | None = None
        self.noted: Holder | None = None  # noted as this thread's while held (``note_held``)

    def take(self, *, shared: bool, wait: bool) -> bool:
        """True once held (or, looking only, if there is no file to hold); False if
        ``wait`` is off and another process holds it."""
        while True:
            if self.look_only and not os.path.lexists(self.path):
                return True
            # The file made is ours to let go of (``release``) from the moment it is opened:
            # a stop (or an error) before it is locked must not leave it behind, made by us
            # and removed by nobody.
            with held():
                self.fd = open_own(self.path, os.O_RDWR | (0 if self.look_only else os.O_CREAT))
            if self.owner is not None and not self.look_only:
                os.fchown(self.fd, *self.owner)
            try:
                name = str(self.path.with_suffix(""))
                taken = take_lock_not_ours(self.fd, name, wait=wait, shared=shared)
            except DestinationLocked:
                self._close()
                raise
            if not taken:
                self._close()
                return False
            if still_at(self.path, self.fd):
                self.noted = note_held(self.fd)
                return True
            self._close()  # we locked a file its last holder had just unlinked

    def release(self) -> None:
        """Let go, removing the file if nobody else holds it (one that waits for it finds it
        gone once it locks it, and tries again). A stop that lands meanwhile does not cut
        it short: the pull stops already, or its next step hears it."""
        if self.fd is None:
            return
        with held(drop=True):
            try:
                fd = self.fd
                if not self.look_only and take_lock(fd, wait=False) and still_at(self.path, fd):
                    self.path.unlink()  # alone, and still holding it: nobody else owns the name
            except OSError:
                pass  # a lock file left behind costs nothing; blobdl prune removes it
            finally:
                self._close()

    def _close(self) -> None:
        fd, self.fd = self.fd, None
        if self.noted is not None:
            forget_held(self.noted)
            self.noted = None
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def locked(
    path: Path, *, shared: bool, wait: bool, owner: Owner = None, look_only: bool = False
) -> Iterator[bool]:
    """Hold the lock at ``path`` for the block; yields False (not waiting) if it is taken."""
    lock = LockFile(path, owner, look_only=look_only)
    try:
        yield lock.take(shared=shared, wait=wait)
    finally:
        lock.release()
