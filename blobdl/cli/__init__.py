"""The command line: argument parsing, progress display and exit codes. No download logic.

``blobdl URL`` and ``blobdl -i MANIFEST`` (the download, a command without a name) are here;
every named command is one entry of ``COMMANDS`` (``blobdl pull REF`` is ``_pull``,
``blobdl prune`` is ``_prune``). The parser and the settings it yields are ``_args``; what
is shown is ``_display``.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple, NoReturn

from .._redact import redact_url
from ..batch._items import Numbering
from ..batch._manifest import numbered_items, read_manifest
from ..batch._scheduler import PER_HOST, BatchEvent, ItemResult, download_numbered
from ..engine._download import Downloader
from ..engine._tell import failed as failed_event
from ..errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, BlobdlError, UsageError
from ..events import Failed, Finished
from ..processes._signals import commit, interrupted, stoppable
from ._args import build_parser, in_options, settings_from
from ._batch_bar import BatchBar
from ._display import (
    Display,
    display_for,
    error,
    fail,
    given_closed,
    json_line,
    open_standard_streams,
    quiet_dask,
    say,
    show_warnings,
    watch_stdout,
    with_lost_output,
)

__all__ = ["COMMANDS", "Command", "build_parser", "main", "run", "settings_from"]


class Command(NamedTuple):
    """A named command, ``blobdl NAME ...``."""

    usage: str  # what follows "blobdl" in its line of `blobdl --help`, e.g. "pull REF"
    summary: str  # the rest of that line
    main: Callable[[Sequence[str]], int]  # given the arguments after the name; the exit code


def _later(module: str) -> Callable[[Sequence[str]], int]:
    """A command's ``main``, imported when the command runs: ``blobdl URL`` and ``-i`` do not
    pay for the registry's and Hugging Face's modules at every start."""

    def main(argv: Sequence[str]) -> int:
        command: Callable[[Sequence[str]], int] = importlib.import_module(module, __name__).main
        return command(argv)

    return main


# A URL has a scheme, so no URL is ever taken for a command's name: `blobdl URL` stays the
# download. A new command is one entry here; `blobdl --help` lists it.
COMMANDS = {
    "pull": Command(
        "pull REF",
        "pull a model from an OCI/Ollama registry into Ollama's store",
        _later("._pull"),
    ),
    "prune": Command(
        "prune",
        "remove abandoned partials, stale locks and unused blobs from the store",
        _later("._prune"),
    ),
    "hf": Command(
        "hf REPO [PATH ...]",
        "download a Hugging Face repository into huggingface_hub's cache",
        _later("._hf"),
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    open_standard_streams()
    watch_stdout()
    with stoppable():  # SIGTERM is Ctrl-C, for every command: exit 130 with partials kept
        try:
            if argv and argv[0] in COMMANDS:
                return with_lost_output(COMMANDS[argv[0]].main(argv[1:]))
            return with_lost_output(_download(argv))
        except KeyboardInterrupt as stop:  # outside a command's own report (its arguments)
            error(interrupted(stop))
            return EXIT_INTERRUPTED


def _download(argv: Sequence[str]) -> int:
    """``blobdl URL`` and ``blobdl -i MANIFEST``."""
    parser = build_parser([(command.usage, command.summary) for command in COMMANDS.values()])
    named = parser.parse_known_args(argv)[0].url
    if named in COMMANDS:  # `blobdl -q prune`: not the URL 'prune'
        parser.error(f"'{named}' is a command: put options after it (blobdl {named} [OPTIONS])")
    args = parser.parse_args(argv)
    if (args.url is None) == (args.input is None):
        parser.error("give either a URL or -i MANIFEST")
    if args.input is not None and args.output is not None:
        parser.error("-o does not go with -i: give each destination in the manifest")
    if args.input is not None and args.digest is not None:
        parser.error("--digest does not go with -i: give each digest in the manifest")
    if args.input is None and args.base_dir is not None:
        parser.error("--base-dir goes with -i (for one URL, give -o)")
    if args.input is None and args.scheduler is not None:
        parser.error("--scheduler goes with -i (a manifest) or pull")
    if args.input is None and args.per_host is not None:
        parser.error("--per-host goes with -i (for one URL, --connections is the limit)")
    show_warnings(quiet=args.quiet and not args.json)
    display = display_for(args)
    if args.input is not None:
        return _main_many(args, display)
    try:
        downloader = Downloader(settings_from(args))
        result = downloader.download(
            args.url, args.output, digest=args.digest, on_event=display.event
        )
    except BlobdlError as exc:
        return fail(display, exc, exc.exit_code)
    except KeyboardInterrupt as stop:
        return fail(display, interrupted(stop), EXIT_INTERRUPTED)
    display.finished(result)
    return EXIT_OK


def _main_many(args: argparse.Namespace, display: Display) -> int:
    """``-i MANIFEST``: every item, one shared budget, a summary, the first failure's code."""
    try:
        text = _read_manifest(args.input)
    except OSError as exc:
        return fail(display, UsageError(f"cannot read {args.input}: {exc.strerror}"), EXIT_USAGE)
    except UsageError as exc:
        return fail(display, exc, EXIT_USAGE)
    except KeyboardInterrupt as stop:  # `producer | blobdl -i -` stopped: --json says it too
        return fail(display, interrupted(stop), EXIT_INTERRUPTED)
    on_cluster = args.scheduler is not None
    if on_cluster:
        quiet_dask()
    tell: Callable[[BatchEvent], None] | None = None  # nothing drawn per item: no events sent
    if on_cluster:
        tell = BatchBar(display).event
    elif display.mode == "json":
        tell = display.item_event
    try:
        # On a cluster, paths are the workers': base-dir confinement is checked there.
        items, numbering = numbered_items(text, None if on_cluster else args.base_dir)
        display.lines = numbering.lines or ()  # --json lines name each item's line too
        if not items:  # -i at the wrong file: nothing to do must not look like success
            named = "stdin" if args.input == "-" else args.input
            raise UsageError(f"{named}: the manifest lists no items")
        results = download_numbered(  # its errors name an item by its manifest line
            items,
            numbering,
            max_connections=args.connections,
            per_host=PER_HOST if args.per_host is None else args.per_host,
            base_dir=args.base_dir,
            settings=settings_from(args),
            on_event=tell,
            cluster=args.scheduler,
        )
        # Every item is done: its report must not be cut by a stop, nor the batch undone.
        commit()
    except UsageError as exc:  # download_numbered's own: max_connections is --connections here
        return fail(display, in_options(exc), EXIT_USAGE)
    except BlobdlError as exc:
        return fail(display, exc, exc.exit_code)
    except KeyboardInterrupt as stop:
        return fail(display, interrupted(stop), EXIT_INTERRUPTED)
    display.close()
    for index, outcome in enumerate(results):  # with --json: lines for the items not told yet
        display.item_event(BatchEvent(index, _last_word(outcome)))
    return _summarise(results, numbering, display.mode)


def _last_word(outcome: ItemResult) -> Finished | Failed:
    """An item's outcome as the event that ends it. A duplicate is told no events of its
    own (its first's are its), yet a JSON reader keys on the item: it gets this line."""
    error, item = outcome.error, outcome.item
    if error is None:
        assert outcome.result is not None  # an item has its result or its error
        return Finished(outcome.result)
    return failed_event(item.url, item.path, error)


def _read_manifest(name: str) -> bytes:
    if name == "-":
        if given_closed("stdin"):  # read as /dev/null: said, not taken for an empty manifest
            raise UsageError("stdin is closed: give the manifest as a file, or pipe it in")
        return read_manifest(sys.stdin.buffer)
    with open(name, "rb") as stream:
        return read_manifest(stream)


def _summarise(results: list[ItemResult], numbering: Numbering, mode: str) -> int:
    """The report of ``-i``; a failed item is named by its manifest line (the line to
    fix, as every other error of a batch names it) and its URL without credentials."""
    failed = [r for r in results if r.error is not None]
    if mode == "json":
        json_line(sys.stdout, {"event": "summary", "ok": len(results) - len(failed),
                                "failed": len(failed)})  # fmt: skip
    else:  # quiet: the failures only (and the exit code)
        for index, r in enumerate(results):
            if r.result is None:
                line = numbering.one(index)
                # An error that names the item's line already (a path leading outside the
                # base directory) names it once.
                error = str(r.error).removeprefix(f"{line}: ")
                say(f"FAILED  {line}: {redact_url(r.item.url)}: {error}")
            elif mode != "quiet":
                note = " (cache)" if r.result.cached else ""
                say(f"ok      {r.result.path}  {r.result.size} bytes{note}")
        if mode != "quiet":
            say(f"{len(results) - len(failed)} ok, {len(failed)} failed")
    return failed[0].error.exit_code if failed and failed[0].error else EXIT_OK


def run() -> None:
    """Console-script entry point."""
    code = main()
    # The outcome is decided and said: a signal now would only print a traceback over it.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.SIG_IGN)
    _exit(code)


def _exit(code: int) -> NoReturn:
    """End the process with ``code`` as a normal exit would, less the interpreter's
    teardown: freeing every module and object one by one (~30 ms of CPU after a download,
    3% of a manifest of 400 small files) changes nothing for a process that ends. What a
    normal exit does that matters is done first, in its order: the exit handlers run
    (``atexit``: logging's, multiprocessing's, a library's), then the standard streams
    flushed (each line of ours is flushed as it is written, but a handler may print). A
    thread still running (a library's) gets the normal exit, which waits for it, as does a
    stream that cannot be flushed (the interpreter reports it as it always has; the
    handlers, run once, are not run again)."""
    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)
    os._exit(code)
