"""A slow disk's directory fsync, for the tests of a batch's pool as it ends.

The pool's processes fsync, as they end, the directories their seats renamed files in; on an
NFS mount or a throttled volume that takes seconds. ``HeldSync`` stands in for that fsync
(``blobdl.batch._pool.sync_dir_quietly``, inherited by the forked pool) and holds it until
the test lets it go: ``held`` is there only while it waits, ``release`` lets it go, and
``synced`` notes each directory, released or given up on.

``python -m tests.held_sync FOLDER ARGS``: the command line (``blobdl ARGS``) with its
pool's fsyncs held, their files in FOLDER.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

GIVE_UP = 20.0  # seconds: a scheduler deaf to the release fails its test, never hangs it


class HeldSync:
    def __init__(self, folder: Path) -> None:
        self.held, self.release = folder / "held", folder / "release"
        self.synced = folder / "synced"

    def __call__(self, directory: Path) -> None:
        self.held.touch()
        deadline = time.monotonic() + GIVE_UP
        while not self.release.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.held.unlink()
        how = "released" if self.release.exists() else "gave up"
        with open(self.synced, "a") as note:
            note.write(f"{directory} {how}\n")


def main() -> None:
    from blobdl.batch import _pool
    from blobdl.cli import run

    _pool.sync_dir_quietly = HeldSync(Path(sys.argv[1]))
    sys.argv = ["blobdl", *sys.argv[2:]]
    run()


if __name__ == "__main__":
    main()
