"""A threaded program calling blobdl, for the tests that signal or kill such a caller.

``python -m tests.threaded_caller MODE URL OUT SETTINGS_JSON [--in-thread]``: MODE is
``download`` or ``many``. A thread logs in a tight loop the whole time (the process is
threaded, as batch jobs are); the download runs in the main thread, or with
``--in-thread`` in a worker thread the main thread joins. Prints one JSON line per progress
event (``{"done": N, "pid": P}``), then the outcome: ``{"outcome": "ok"}``,
``{"outcome": "interrupted", "signum": N, "thread": "main"|"worker"}`` or
``{"outcome": "error", "error": TEXT}``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from typing import Any

import blobdl


def _noise() -> None:
    log = logging.getLogger("tests.noise")
    log.addHandler(logging.FileHandler(os.devnull))
    log.propagate = False
    while True:
        log.warning("busy %d", threading.get_ident())


def _say(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def _on_event(event: Any) -> None:
    inner = getattr(event, "event", event)  # a BatchEvent wraps the download's event
    if isinstance(inner, blobdl.Progress):
        _say({"done": inner.done, "pid": os.getpid()})


def _call(mode: str, url: str, out: str, settings: dict[str, Any]) -> None:
    where = threading.current_thread().name
    try:
        if mode == "many":
            results = blobdl.download_many(
                [blobdl.Item(url, out)], on_event=_on_event, max_connections=4, **settings
            )
            errors = [r.error for r in results if r.error is not None]
            if errors:
                raise errors[0]
        else:
            blobdl.download(url, out, on_event=_on_event, **settings)
    except blobdl.Interrupted as exc:
        _say({"outcome": "interrupted", "signum": exc.signum, "thread": where})
    except blobdl.BlobdlError as exc:
        _say({"outcome": "error", "error": f"{type(exc).__name__}: {exc}", "thread": where})
    else:
        _say({"outcome": "ok", "thread": where})


def main() -> None:
    mode, url, out, raw = sys.argv[1:5]
    settings = json.loads(raw)
    threading.Thread(target=_noise, daemon=True).start()
    if "--in-thread" not in sys.argv:
        _call(mode, url, out, settings)
        return
    done = threading.Event()

    def work() -> None:
        _call(mode, url, out, settings)
        done.set()

    worker = threading.Thread(target=work, name="worker")
    worker.start()
    # A terminal Ctrl-C reaches this thread too: carry on waiting. (Not in join(): one
    # interrupted by KeyboardInterrupt can leave the thread looking finished.)
    while True:
        try:
            if done.wait(0.05):
                break
        except KeyboardInterrupt:
            continue
    worker.join()


if __name__ == "__main__":
    main()
