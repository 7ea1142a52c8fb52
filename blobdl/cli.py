"""The command line: argument parsing, progress display and exit codes. No download logic."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from ._batch import BatchEvent, ItemResult, download_many, parse_manifest
from ._download import Downloader
from ._events import DownloadResult, Event, Failed, Progress, Started, event_record
from ._version import __version__
from .config import Settings, parse_header, parse_size, redact_url
from .errors import (
    EXIT_INTEGRITY,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_LOCAL,
    EXIT_NETWORK,
    EXIT_OK,
    EXIT_USAGE,
    BlobdlError,
    Interrupted,
    UsageError,
)

EPILOG = f"""\
exit codes:
  {EXIT_OK}    the blob is complete at the destination
  {EXIT_USAGE}    bad usage or input (arguments, URL, settings)
  {EXIT_NETWORK}    network or server failure (after retries), HTTP errors such as 404
  {EXIT_INTEGRITY}    integrity failure: the remote changed or broke the protocol
  {EXIT_LOCAL}    local file or disk failure (missing directory, no space, I/O error)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C / SIGTERM)
  {EXIT_INTERNAL}    internal error (a bug: please report it)

an existing destination:
  is kept if its digest matches (--digest, or the manifest's digest); is replaced if a
  digest is given and it does not match; is refused without a digest unless --force.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own exit code is 2 too, kept explicit
        # One line, like every other error of ours (the usage is one --help away).
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except BlobdlError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _header(text: str) -> tuple[str, str]:
    try:
        return parse_header(text)
    except BlobdlError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    d = Settings()
    p = _Parser(
        prog="blobdl",
        description="Download one large blob over HTTP(S) with parallel byte ranges.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", nargs="?", help="http:// or https:// URL of the blob")
    p.add_argument(
        "-i",
        "--input",
        metavar="MANIFEST",
        help="download every blob listed in MANIFEST ('-': stdin): one 'URL [PATH] "
        "[sha256:HEX]' or JSON object per line; --connections is then the shared budget",
    )
    p.add_argument(
        "--per-host", type=int, default=8, help="with -i: connections to one host (%(default)s)"
    )
    p.add_argument(
        "--base-dir",
        metavar="DIR",
        help="with -i: every manifest path is relative to DIR and must stay inside it "
        "(absolute paths, '..' and symlinks leading out are refused); items without a path "
        "are named inside DIR. Without it, manifest paths are used as given",
    )
    p.add_argument("-o", "--output", help="destination file (default: name from the server/URL)")
    p.add_argument("--parts", type=int, help="cut the blob into exactly N parts")
    p.add_argument(
        "--connections", type=int, default=d.connections, help="parallel workers (%(default)s)"
    )
    p.add_argument("--min-part-size", type=_size, default=d.min_part_size, help="e.g. 100MB")
    p.add_argument("--max-part-size", type=_size, default=d.max_part_size, help="e.g. 1GB")
    p.add_argument(
        "--retries", type=int, default=d.retries, help="retries per part (default %(default)s)"
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=d.stall_timeout,
        help="seconds without progress before a part is restarted (default %(default)s)",
    )
    p.add_argument("--max-backoff", type=float, default=d.max_backoff, help="seconds")
    p.add_argument(
        "--progress-interval",
        type=float,
        default=d.progress_interval,
        help="seconds between progress samples (%(default)s)",
    )
    p.add_argument(
        "--checkpoint-interval",
        type=float,
        default=d.checkpoint_interval,
        help="seconds between resume checkpoints (%(default)s)",
    )
    p.add_argument("--max-redirects", type=int, default=d.max_redirects)
    p.add_argument(
        "-H", "--header", type=_header, action="append", default=[], help="'Name: value'"
    )
    p.add_argument("--digest", help="sha256:<hex> the blob must have (checked before the rename)")
    p.add_argument(
        "--no-resume", action="store_true", help="ignore a partial earlier download; start over"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing destination even without a digest (see below)",
    )
    p.add_argument(
        "--keep-bad", action="store_true", help="on a digest mismatch keep DEST.blobdl-bad"
    )
    p.add_argument(
        "--lock-timeout",
        type=float,
        default=d.lock_timeout,
        help="seconds to wait while another blobdl writes the same destination (%(default)s)",
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="content-addressed cache (DIR/sha256-<hex>) for blobs with a digest",
    )
    p.add_argument(
        "--verify-cache", action="store_true", help="hash a cache entry again on every hit"
    )
    p.add_argument("--limit-rate", type=_size, help="bytes/s for the whole download, e.g. 50MB")
    p.add_argument(
        "--no-steal",
        action="store_true",
        help="never let idle connections take over slow or large ranges",
    )
    p.add_argument("--ca-bundle", help="PEM file of CA certificates to trust")
    p.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    p.add_argument("--client-cert", metavar="PEM", help="client certificate (may hold the key)")
    p.add_argument("--client-key", metavar="PEM", help="unencrypted key of --client-cert")
    p.add_argument(
        "--proxy",
        metavar="URL",
        help="HTTP(S) proxy for every URL, http://[user:pass@]host:port (default: HTTP(S)_PROXY)",
    )
    p.add_argument(
        "--no-env-proxy",
        action="store_true",
        help="ignore HTTP_PROXY, HTTPS_PROXY and NO_PROXY from the environment",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, no summary")
    p.add_argument("--json", action="store_true", help="progress as JSON lines on stdout")
    p.add_argument("--version", action="version", version=f"blobdl {__version__}")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        parts=args.parts,
        connections=args.connections,
        min_part_size=args.min_part_size,
        max_part_size=args.max_part_size,
        retries=args.retries,
        stall_timeout=args.stall_timeout,
        max_backoff=args.max_backoff,
        progress_interval=args.progress_interval,
        checkpoint_interval=args.checkpoint_interval,
        max_redirects=args.max_redirects,
        headers=tuple(args.header),
        ca_bundle=args.ca_bundle,
        verify_tls=not args.insecure,
        client_cert=args.client_cert,
        client_key=args.client_key,
        proxy=args.proxy,
        trust_env=not args.no_env_proxy,
        cache_dir=args.cache_dir,
        verify_cache=args.verify_cache,
        limit_rate=args.limit_rate,
        steal=not args.no_steal,
        resume=not args.no_resume,
        force=args.force,
        keep_bad=args.keep_bad,
        lock_timeout=args.lock_timeout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "pull":  # `blobdl pull REF`: see _pullcli
        from ._pullcli import main as pull_main

        return pull_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.url is None) == (args.input is None):
        parser.error("give either a URL or -i MANIFEST")
    if args.input is not None and args.output is not None:
        parser.error("-o does not go with -i: give each destination in the manifest")
    if args.input is None and args.base_dir is not None:
        parser.error("--base-dir goes with -i (for one URL, give -o)")
    _show_warnings()
    display = _display_for(args)
    if args.input is not None:
        return _main_many(args, display)
    try:
        downloader = Downloader(settings_from(args))
        result = downloader.download(
            args.url, args.output, digest=args.digest, on_event=display.event
        )
    except BlobdlError as exc:
        return _fail(display, exc, exc.exit_code)
    except KeyboardInterrupt:
        return _fail(display, Interrupted(2), EXIT_INTERRUPTED)
    display.finished(result)
    return EXIT_OK


def _main_many(args: argparse.Namespace, display: _Display) -> int:
    """``-i MANIFEST``: every item, one shared budget, a summary, the first failure's code."""
    try:
        text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text()
    except OSError as exc:
        return _fail(display, UsageError(f"cannot read {args.input}: {exc.strerror}"), EXIT_USAGE)
    try:
        items = parse_manifest(text, args.base_dir)
        results = download_many(
            items,
            max_connections=args.connections,
            per_host=args.per_host,
            base_dir=args.base_dir,
            settings=settings_from(args),
            on_event=display.item_event,
        )
    except BlobdlError as exc:
        return _fail(display, exc, exc.exit_code)
    except KeyboardInterrupt:
        return _fail(display, Interrupted(2), EXIT_INTERRUPTED)
    display.close()
    return _summarise(results, display.mode)


def _summarise(results: list[ItemResult], mode: str) -> int:
    failed = [r for r in results if r.error is not None]
    if mode == "json":
        _json_line(sys.stdout, {"event": "summary", "ok": len(results) - len(failed),
                                "failed": len(failed)})  # fmt: skip
    elif mode != "quiet" or failed:
        for r in results:
            if r.result is not None:
                note = " (cache)" if r.result.cached else ""
                _say(f"ok      {r.result.path}  {r.result.size} bytes{note}")
            else:
                _say(f"FAILED  {redact_url(r.item.url)}: {r.error}")
        _say(f"{len(results) - len(failed)} ok, {len(failed)} failed")
    return failed[0].error.exit_code if failed and failed[0].error else EXIT_OK


def _show_warnings() -> None:
    """Library warnings (resume decisions, kept partial files) as one line each on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("blobdl: warning: %(message)s"))
    logger = logging.getLogger("blobdl")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING)
    logger.propagate = False


def _fail(display: _Display, exc: BaseException, code: int) -> int:
    display.close()
    if display.mode == "json" and not display.failed:  # e.g. bad settings: no event yet
        record = {"event": "failed", "url": "", "path": "", "error": str(exc), "exit_code": code}
        _json_line(sys.stdout, record)
    _say(f"blobdl: error: {exc}")
    return code


def _json_line(stream: IO[str], record: dict[str, Any]) -> None:
    _write(stream, json.dumps(record, separators=(",", ":")) + "\n")


def _say(line: str) -> None:
    _write(sys.stderr, line + "\n")


def _write(stream: IO[str], text: str) -> None:
    """Write and flush. A reader that went away (``| head``, a closed terminal) must never
    cost the download: the stream is silenced and the download goes on."""
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):  # BrokenPipeError, EIO; ValueError: closed
        _silence(stream)


def _silence(stream: IO[str]) -> None:
    """Point the stream's descriptor at /dev/null: what is still buffered (and anything
    written later, by tqdm or the interpreter's exit flush) goes nowhere instead of raising."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)
        stream.flush()
    except (OSError, ValueError):
        pass


class _Display:
    """Shows events: a tqdm bar on a TTY, JSON lines with --json, or nothing."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.bar: Any = None
        self.failed = False
        self.dead = False  # the bar's terminal went away

    def item_event(self, batch_event: BatchEvent) -> None:
        """With -i: JSON lines carry the item's index; nothing else is drawn per item."""
        event = batch_event.event
        self.failed = self.failed or isinstance(event, Failed)
        if self.mode == "json":
            _json_line(sys.stdout, {"item": batch_event.item, **event_record(event)})

    def event(self, event: Event) -> None:
        self.failed = self.failed or isinstance(event, Failed)
        if self.mode == "json":
            _json_line(sys.stdout, event_record(event))
        elif self.mode == "bar" and not self.dead:
            try:
                if isinstance(event, Started):
                    self._open_bar(event.size, event.resumed)  # now: tqdm's clock starts with us
                elif isinstance(event, Progress):
                    self._draw(event)
            except (OSError, ValueError):  # the terminal went away: stop drawing, go on
                self.dead, self.bar = True, None
                _silence(sys.stdout)

    def _open_bar(self, total: int | None, initial: int) -> None:
        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no monitor thread: we fork after this point
        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            dynamic_ncols=True,
            file=sys.stdout,
        )

    def _draw(self, progress: Progress) -> None:
        if self.bar is None:
            self._open_bar(progress.total, 0)
        self.bar.set_postfix_str(f"{progress.active} parts active", refresh=False)
        self.bar.update(progress.done - self.bar.n)

    def finished(self, result: DownloadResult) -> None:
        self.close()
        if self.mode in ("quiet", "json"):  # JSON: the finished event said it all
            return
        rate = result.size / result.elapsed if result.elapsed > 0 else 0.0
        _say(
            f"{result.path}: {result.size} bytes in {result.elapsed:.1f} s "
            f"({rate / 1e6:.1f} MB/s, {result.parts} parts, {result.retries} retries, "
            f"{result.steals} steals)"
        )

    def close(self) -> None:
        bar, self.bar = self.bar, None
        if bar is not None:
            try:
                bar.close()
            except (OSError, ValueError):
                _silence(sys.stdout)


def _display_for(args: argparse.Namespace) -> _Display:
    if args.json:
        return _Display("json")
    if args.quiet:
        return _Display("quiet")
    return _Display("bar" if sys.stdout.isatty() else "plain")


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
