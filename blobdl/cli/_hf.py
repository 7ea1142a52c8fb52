"""``blobdl hf REPO [PATH ...]``: argument parsing and display only; the work is
``blobdl.hf_download``.

Every option of the plain command that shapes a download applies (``_args.add_shared_options``);
``--cache-dir`` here is huggingface_hub's cache, not blobdl's content-addressed one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import EXIT_OK, BlobdlError
from ..events import event_record
from ..hf._download import HfEvent, HfResult, HfStarted, hf_download
from ..hf._env import DEFAULT_ENDPOINT
from ..hf._repo import REPO_TYPES
from ._args import EXIT_CODES, Parser, add_shared_options, path_arg, settings_from
from ._display import Display, display_for, failure, json_line, say, show_warnings, tell

DESCRIPTION = f"""\
Download a Hugging Face repository (all its files, or PATH ... and the files under a PATH
ending in /) into huggingface_hub's cache, where transformers, diffusers and vLLM look, or
into --local-dir. The Hub is $HF_ENDPOINT (default {DEFAULT_ENDPOINT}); the cache is
$HF_HUB_CACHE (default $HF_HOME/hub); the token is --token, else $HF_TOKEN, else the file
`hf auth login` wrote. Every option of `blobdl URL` that shapes the download applies too
(--connections is the budget all files share). Prints the snapshot folder (or the local dir).
With $HF_HUB_OFFLINE on (1, ON, YES, TRUE), no request is sent: the files come from the
cache (or the local dir) if all are there, as huggingface_hub's offline mode finds them."""
EPILOG = f"""\
{EXIT_CODES}
hf's own failures: the repository, revision or file is not found, the repository is gated or
private and no token can see it (3); a file does not match its sha256 or git sha1 (4);
$HF_HUB_OFFLINE is on and the files asked for are not all on disk (2).
"""


def build_parser() -> Parser:
    # "resolve": this --cache-dir (huggingface_hub's) replaces the shared one (blobdl's own).
    p = Parser(
        prog="blobdl hf",
        usage="%(prog)s [OPTIONS] REPO [PATH ...]",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        conflict_handler="resolve",
    )
    p.add_argument("repo", help="the repository, e.g. openai-community/gpt2")
    # A default: else argparse counts an optional "*" positional as required in its error.
    p.add_argument(
        "paths", nargs="*", default=[], metavar="PATH", help="files to fetch (default: all)"
    )
    p.add_argument("--revision", default="main", help="branch, tag or commit (%(default)s)")
    p.add_argument("--repo-type", choices=list(REPO_TYPES), default="model")
    p.add_argument(
        "--include", action="append", metavar="GLOB", help="only files matching (repeatable)"
    )
    p.add_argument(
        "--exclude", action="append", metavar="GLOB", help="no files matching (repeatable)"
    )
    p.add_argument("--token", help="Hub token (default: $HF_TOKEN, then the stored token)")
    add_shared_options(p)
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--cache-dir",
        dest="hf_cache",
        type=path_arg,
        metavar="DIR",
        help="huggingface_hub's cache folder",
    )
    where.add_argument(
        "--local-dir", type=path_arg, metavar="DIR", help="the files themselves, in DIR"
    )
    p.set_defaults(cache_dir=None)  # blobdl's content-addressed cache: not with hf
    p.add_argument("--verify-cache", action="store_true", help=argparse.SUPPRESS)  # refused
    return p


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command line, paths wherever they come among the options."""
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.verify_cache:  # blobdl's own cache, which hf never uses: refused, not ignored
        parser.argv = list(argv)  # all of it (the intermixed parse's second pass set less)
        parser.error(
            "--verify-cache does not go with hf: it checks blobdl's own cache, which hf does "
            "not use (its --cache-dir is huggingface_hub's)"
        )
    return args


def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    show_warnings()
    display = _HfDisplay(display_for(args))
    try:
        display.finished(_download(args, display))
    except (BlobdlError, KeyboardInterrupt) as exc:
        return failure(display.base, exc)
    return EXIT_OK


def _download(args: argparse.Namespace, display: _HfDisplay) -> HfResult:
    return hf_download(
        args.repo,
        args.paths,
        revision=args.revision,
        repo_type=args.repo_type,
        include=args.include,
        exclude=args.exclude,
        cache_dir=args.hf_cache,
        local_dir=args.local_dir,
        token=args.token,
        settings=settings_from(args),
        on_event=display.event,
    )


class _HfDisplay:
    """One bar for the whole repository (bytes across files), then one summary line."""

    def __init__(self, base: Display) -> None:
        self.base = base

    def event(self, event: HfStarted | HfEvent) -> None:
        mode = self.base.mode
        if isinstance(event, HfStarted):
            if mode == "json":
                json_line(sys.stdout, {"event": "hf_started", **event._asdict()})
            elif mode == "bar" and event.bytes_needed:
                self.base._open_bar(event.bytes_needed, 0)
            elif mode == "plain":
                say(f"{event.repo} at {event.commit}: {event.missing} of {event.files} files "
                    f"to fetch, {event.bytes_needed} bytes")  # fmt: skip
            return
        if mode == "json":
            json_line(sys.stdout, {"path": event.path, **event_record(event.event)})
        else:
            self.base.tally(event.path, event.event)

    def finished(self, result: HfResult) -> None:
        self.base.close()
        if self.base.mode == "json":
            json_line(sys.stdout, _summary(result))
            return
        if self.base.mode != "quiet":
            fetched = sum(1 for f in result.files if f.download is not None)
            say(f"{result.repo} at {result.commit}: {len(result.files)} files, {fetched} "
                f"fetched ({result.bytes_fetched} bytes) in {result.elapsed:.1f} s")  # fmt: skip
        tell(str(result.path))


def _summary(result: HfResult) -> dict[str, Any]:
    return {
        "event": "hf_finished",
        "repo": result.repo,
        "revision": result.revision,
        "commit": result.commit,
        "path": str(result.path),
        "bytes_fetched": result.bytes_fetched,
        "bytes_received": result.bytes_received,
        "elapsed": round(result.elapsed, 3),
        "files": [
            {"path": f.path, "size": f.size, "fetched": f.download is not None}
            for f in result.files
        ],
    }
