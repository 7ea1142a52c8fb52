"""``blobdl pull REF``: argument parsing and display only; the work is ``blobdl.pull``.

Every option of the plain command that shapes a download applies (connections, retries,
stall timeout, proxies, TLS, --json, --limit-rate...): ``_args.add_shared_options`` adds them
to both parsers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import EXIT_INTERRUPTED, EXIT_OK, BlobdlError
from ..events import Failed, Finished, Progress, event_record
from ..processes._signals import interrupted
from ..registry._pull import PullResult, pull, pull_every_worker
from ..registry._pull_events import PullEvent, PullStarted, WorkerEvent
from ._args import EXIT_CODES, Parser, add_shared_options, path_arg, settings_from
from ._display import display_for, fail, json_line, quiet_dask, say, show_warnings

DESCRIPTION = """\
Pull a model from an OCI/Ollama registry into Ollama's store (no Ollama server needed).
REF is read as `ollama pull` reads it: [HOST[:PORT]/][NAMESPACE/]MODEL[:TAG], defaults
registry.ollama.ai, library and latest; http://HOST/... for a plain-HTTP registry. Ours
only: a digest pin, MODEL[:TAG]@sha256:HEX. A tag that moves frees the blobs only its old
manifest used (unless OLLAMA_NOPRUNE is set, as for Ollama). Every option of `blobdl URL`
that shapes the download applies too (--connections is the budget all layers share)."""
EPILOG = f"""\
{EXIT_CODES}
pull's own failures: the model is not found, authentication is refused or the manifest is
not supported (3); a layer does not match its digest (4); the store is not writable or
has too little room (5).
"""


MODELS_DIR_HELP = (
    "the store (default: the one Ollama reads: $OLLAMA_MODELS, else ~/.ollama/models, else "
    "the system service's /usr/share/ollama/.ollama/models if only that exists)"
)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="blobdl pull",
        usage="%(prog)s [OPTIONS] REF",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        conflict_handler="resolve",  # blobdl's cache options: replaced by hidden ones below
    )
    p.add_argument("ref", help="the model, e.g. llama3.2:1b")
    p.add_argument("--models-dir", type=path_arg, metavar="DIR", help=MODELS_DIR_HELP)
    p.add_argument(
        "--insecure",
        action="store_true",
        help="reach the registry over plain HTTP, as 'ollama pull --insecure' does (a "
        "reference without a scheme becomes http://); TLS is never left unverified by it: "
        "that is --no-verify-tls",
    )
    p.add_argument(
        "--every-worker",
        action="store_true",
        help="with --scheduler: the model into the store of every worker, once per store "
        "(--models-dir, else each worker's $OLLAMA_MODELS or home)",
    )
    add_shared_options(p)
    # The store is content-addressed already: a pull never uses blobdl's cache. Kept (out of
    # the help) only to be refused by name, not taken in silence.
    p.add_argument("--cache-dir", type=path_arg, help=argparse.SUPPRESS)
    p.add_argument("--verify-cache", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.every_worker and args.scheduler is None:
        parser.error("--every-worker goes with --scheduler")
    for option, given in (("--cache-dir", args.cache_dir), ("--verify-cache", args.verify_cache)):
        if given:
            parser.error(f"{option} does not go with pull: the store is its cache (a blob "
                         "already in blobs/ is never fetched again)")  # fmt: skip
    show_warnings()
    if args.scheduler is not None:
        quiet_dask()
    if args.every_worker:
        return _every_worker(args)
    display = _PullDisplay(args)
    try:
        result = pull(
            args.ref,
            args.models_dir,
            settings=settings_from(args),
            on_event=display.event,
            insecure=args.insecure,
            cluster=args.scheduler,
        )
    except BlobdlError as exc:
        return fail(display.base, exc, exc.exit_code)
    except KeyboardInterrupt as stop:
        return fail(display.base, interrupted(stop), EXIT_INTERRUPTED)
    display.finished(result)
    return EXIT_OK


def _every_worker(args: argparse.Namespace) -> int:
    """``--every-worker``: JSON lines carry the worker; a line per worker at the end."""
    display = display_for(args)
    try:
        results = pull_every_worker(
            args.ref,
            args.scheduler,
            args.models_dir,
            settings=settings_from(args),
            on_event=_worker_lines if display.mode == "json" else None,
            insecure=args.insecure,
        )
    except BlobdlError as exc:
        return fail(display, exc, exc.exit_code)
    except KeyboardInterrupt as stop:
        return fail(display, interrupted(stop), EXIT_INTERRUPTED)
    for worker, result in sorted(results.items()):
        if display.mode == "json":
            json_line(sys.stdout, {"worker": worker, **_summary(result)})
        elif display.mode != "quiet":
            say(f"{worker}: pulled {result.reference}: {result.bytes_fetched} bytes fetched "
                f"-> {result.manifest_path}")  # fmt: skip
    return EXIT_OK


def _worker_lines(event: WorkerEvent) -> None:
    inner = event.event
    if isinstance(inner, PullStarted):
        record = {"event": "pull_started", **inner._asdict()}
    else:
        record = {"digest": inner.digest, **event_record(inner.event)}
    json_line(sys.stdout, {"worker": event.worker, **record})


class _PullDisplay:
    """One bar for the whole pull (bytes across layers), then a line per layer."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.base = display_for(args)
        self.mode = self.base.mode
        self.done: dict[str, int] = {}
        self.unresolved: set[str] = set()  # layers whose last round failed

    def event(self, event: PullStarted | PullEvent) -> None:
        if isinstance(event, PullStarted):
            self._started(event)
            return
        # A layer's failure that no later round made good is the pull's: its `failed` line
        # is the one (as a download's); a pull failing otherwise gets its own.
        if isinstance(event.event, Failed):
            self.unresolved.add(event.digest)
        elif isinstance(event.event, Finished):
            self.unresolved.discard(event.digest)
        self.base.failed = bool(self.unresolved)
        if self.mode == "json":
            json_line(sys.stdout, {"digest": event.digest, **event_record(event.event)})
            return
        if isinstance(event.event, Progress):
            self.done[event.digest] = event.event.done
        elif isinstance(event.event, Finished):
            self.done[event.digest] = event.event.result.size
        else:
            return
        self.base.advance_to(sum(self.done.values()))

    def _started(self, event: PullStarted) -> None:
        if self.mode == "json":
            json_line(sys.stdout, {"event": "pull_started", **event._asdict()})
            return
        if self.mode != "quiet":
            say(f"store {event.models_dir} ({WHY[event.models_dir_from]})")
        if self.mode == "bar" and event.missing:
            self.base._open_bar(event.bytes_needed, 0)
        elif self.mode == "plain":
            say(f"pulling {event.reference}: {event.missing} of {event.blobs} blobs to fetch, "
                f"{event.bytes_needed} bytes")  # fmt: skip

    def finished(self, result: PullResult) -> None:
        self.base.close()
        if self.mode == "json":
            json_line(sys.stdout, _summary(result))
            return
        if self.mode == "quiet":
            return
        for layer in result.layers:
            got = layer.download
            how = "present" if got is None else f"fetched in {got.elapsed:.1f} s"
            say(f"{layer.digest}  {layer.size} bytes  {how}")
        if result.freed:
            freed = sum(size for _, size in result.freed)
            say(f"freed {freed} bytes: {len(result.freed)} blobs only the old manifest used")
        if result.kept:
            say(f"kept {len(result.kept)} blobs only the old manifest used: the store holds a "
                "manifest Ollama cannot read (blobdl prune lists it)")  # fmt: skip
        say(f"pulled {result.reference}: {len(result.layers)} blobs, {result.bytes_fetched} "
            f"bytes fetched in {result.elapsed:.1f} s -> {result.manifest_path}")  # fmt: skip


WHY = {
    "--models-dir": "--models-dir",
    "$OLLAMA_MODELS": "from $OLLAMA_MODELS",
    "default": "Ollama's default for this user",
    "service": "Ollama's system service store: ~/.ollama/models does not exist",
}


def _summary(result: PullResult) -> dict[str, Any]:
    return {
        "event": "pull_finished",
        "reference": result.reference,
        "models_dir": str(result.models_dir),
        "manifest": str(result.manifest_path),
        "manifest_digest": result.manifest_digest,
        "bytes_fetched": result.bytes_fetched,
        "bytes_received": result.bytes_received,
        "elapsed": round(result.elapsed, 3),
        "layers": [
            {"digest": r.digest, "size": r.size, "fetched": r.download is not None}
            for r in result.layers
        ],
        "freed": [{"digest": digest, "bytes": size} for digest, size in result.freed],
        "kept": list(result.kept),
    }
