"""The command line's arguments: the parser, and the ``Settings`` it yields."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import logging
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .._version import __version__
from ..batch._scheduler import PER_HOST
from ..config import MAX_PARTS, Settings, parse_header, parse_size
from ..errors import (
    EXIT_INTEGRITY,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_LOCAL,
    EXIT_NETWORK,
    EXIT_OK,
    EXIT_USAGE,
    BlobdlError,
    UsageError,
)
from ..store._digest import parse_digest
from ._display import failed_line, one_line, with_lost_output, write

EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}    the blob is complete at the destination
  {EXIT_USAGE}    bad usage or input (arguments, URL, settings)
  {EXIT_NETWORK}    network or server failure (after retries), HTTP errors such as 404
  {EXIT_INTEGRITY}    integrity failure: the remote changed or broke the protocol
  {EXIT_LOCAL}    local file or disk failure (missing directory, no space, I/O error),
       or stdout refused the report (a full disk: the downloads still finish)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C / SIGTERM)
  {EXIT_INTERNAL}    internal error (a bug: please report it)
"""
EPILOG = f"""\
{EXIT_CODES}
an existing destination:
  is kept if its digest matches (--digest, or the manifest's digest); is replaced if a
  digest is given and it does not match; is refused without a digest unless --force.
  Without a digest, a file blobdl finished from the same URL is kept while neither it nor
  the remote has changed (a rerun keeps what an interrupted run finished).
"""


class Parser(argparse.ArgumentParser):
    argv: Sequence[str] = ()  # what was parsed: --json among it asks for a JSON failure too

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self.argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> Any:  # argparse's own exit code is 2 too, kept explicit
        # With --json the last line is `failed`, whichever check refused the arguments.
        if self._wants_json():
            failed_line(message, EXIT_USAGE)
        # One line, like every other error of ours (the usage is one --help away).
        line = one_line(f"{self.prog}: error: {message} (see {self.prog} --help)")
        self.exit(EXIT_USAGE, line + "\n")

    # --help, --version and the usage go out as every report does: a stdout that loses
    # them is said, once, and the exit code tells (argparse would drop the error, or leave
    # it to the interpreter's exit flush: a traceback, exit 120).
    def _print_message(self, message: str, file: Any = None) -> None:  # sys.stdout or stderr
        if message:
            write(file or sys.stderr, message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        super().exit(with_lost_output(status), message)

    def _wants_json(self) -> bool:
        """``--json`` (or a prefix argparse takes for it) before any ``--``."""
        if "--json" not in self._option_string_actions:
            return False
        longs = [o for o in self._option_string_actions if o.startswith("--")]
        for arg in itertools.takewhile(lambda a: a != "--", self.argv):
            if len(arg) > 2 and [o for o in longs if o.startswith(arg)] == ["--json"]:
                return True
        return False


def _size(text: str) -> int:
    """A size option's bytes: every one counts from 1. A part of a byte is dropped, so
    ``0.5`` comes to 0, said as what it is, not as "must be from 1" of a 0 never written."""
    try:
        size = parse_size(text)
    except BlobdlError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size == 0 and re.search("[1-9]", text):  # not 0 as written: less than a byte
        raise argparse.ArgumentTypeError(f"{text!r} is less than one byte (sizes are whole bytes)")
    return size


def whole_arg(text: str) -> int:
    """A whole number in ASCII digits. int() reads ``1_000`` and the digits of every script
    too, and some pass for what they are not (an Arabic-Indic five is an "o", its zero a dot)."""
    if text.isascii() and "_" not in text:
        with contextlib.suppress(ValueError):  # past 4,300 digits int() refuses too
            return int(text)
    raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")


def seconds_arg(text: str) -> float:
    """A number of seconds in ASCII digits (``1.5``, ``2e3``), as ``whole_arg``; nan and
    inf are read, and refused by the settings' range, which names the option."""
    if text.isascii() and "_" not in text:
        with contextlib.suppress(ValueError):
            return float(text)
    raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")


def path_arg(text: str) -> str:
    """A file or directory named on the command line. An empty one (``--models-dir "$UNSET"``)
    is the current directory to the file system: never what was meant."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path (did a variable expand to nothing?)")
    return text


def output_arg(text: str) -> str:
    """``-o``: a file. ``-`` is standard output to curl and wget, which a download written
    in parts, out of order, cannot be."""
    if text == "-":
        raise argparse.ArgumentTypeError(
            "blobdl writes to a file, in parts, not to standard output: name a file "
            "(./- for one named -)"
        )
    return path_arg(text)


def _digest(text: str) -> str:
    """``--digest``, checked here so that its error names the option; passed on as given."""
    try:
        parse_digest(text)
    except BlobdlError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _header(text: str) -> tuple[str, str]:
    try:
        return parse_header(text)
    except BlobdlError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# The download has no command name: `blobdl URL` and `blobdl -i MANIFEST`.
DOWNLOADS = (
    ("URL", "download one blob (the options below)"),
    ("-i MANIFEST", "download every blob a manifest lists, sharing one connection budget"),
)
ABOUT = "Download very large blobs over HTTP(S) with parallel byte ranges."
HINT = "'blobdl COMMAND --help' shows the options of that command."
USAGE = "%(prog)s [OPTIONS] URL\n       %(prog)s [OPTIONS] -i MANIFEST\n       %(prog)s COMMAND ..."


def build_parser(commands: Sequence[tuple[str, str]] = ()) -> argparse.ArgumentParser:
    """The download's parser; its help lists ``commands`` too, as (usage, one line) pairs."""
    p = Parser(
        prog="blobdl",
        usage=USAGE,
        description=_description([*DOWNLOADS, *commands]),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", nargs="?", help="http:// or https:// URL of the blob")
    p.add_argument(
        "-i",
        "--input",
        type=path_arg,
        metavar="MANIFEST",
        help="download every blob listed in MANIFEST ('-': stdin): one 'URL [PATH] "
        "[sha256:HEX]' or JSON object per line; --connections is then the shared budget",
    )
    # No default here: given without -i, it is refused (see _download), not ignored.
    p.add_argument(
        "--per-host",
        type=whole_arg,
        metavar="N",
        help=f"with -i: connections to one host ({PER_HOST})",
    )
    p.add_argument(
        "--base-dir",
        type=path_arg,
        metavar="DIR",
        help="with -i: every manifest path is relative to DIR and must stay inside it "
        "(absolute paths, '..' and symlinks leading out are refused); items without a path "
        "are named inside DIR. Without it, manifest paths are used as given",
    )
    p.add_argument(
        "-o",
        "--output",
        type=output_arg,
        help="destination file (default: name from the server/URL)",
    )
    p.add_argument(
        "--digest", type=_digest, help="sha256:<hex> the blob must have (checked before the rename)"
    )
    add_shared_options(p)
    p.add_argument(
        "--insecure",
        dest="insecure_tls",
        action="store_true",
        help="deprecated: the old name of --no-verify-tls here ('blobdl pull --insecure' "
        "means plain HTTP to the registry, as for 'ollama pull')",
    )
    return p


def _description(commands: Sequence[tuple[str, str]]) -> str:
    width = max(len(usage) for usage, _ in commands) + len("blobdl ")
    lines = [f"  {'blobdl ' + usage:<{width}}  {summary}" for usage, summary in commands]
    return "\n".join([ABOUT, "", "commands:", *lines, "", HINT])


def add_shared_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that downloads: how, over what, and what is shown."""
    d = Settings()
    p.add_argument(
        "--parts",
        type=whole_arg,
        metavar="N",
        help=f"cut the blob into exactly N parts (at most {MAX_PARTS})",
    )
    p.add_argument(
        "--connections",
        type=whole_arg,
        default=d.connections,
        help="parallel connections (%(default)s)",
    )
    p.add_argument(
        "--processes",
        type=whole_arg,
        default=None,
        help="worker processes the connections run in (default: one per CPU, at least 2)",
    )
    p.add_argument("--min-part-size", type=_size, default=d.min_part_size, help="e.g. 100MB")
    p.add_argument(
        "--max-part-size",
        type=_size,
        default=d.max_part_size,
        help=f"e.g. 1GB (exceeded only where a blob would have over {MAX_PARTS} parts)",
    )
    p.add_argument(
        "--retries",
        type=whole_arg,
        default=d.retries,
        help="retries per part (default %(default)s)",
    )
    p.add_argument(
        "--stall-timeout",
        type=seconds_arg,
        default=d.stall_timeout,
        help="seconds without progress before a part is restarted (default %(default)s)",
    )
    p.add_argument("--max-backoff", type=seconds_arg, default=d.max_backoff, help="seconds")
    p.add_argument(
        "--progress-interval",
        type=seconds_arg,
        default=d.progress_interval,
        help="seconds between progress samples (%(default)s)",
    )
    p.add_argument(
        "--checkpoint-interval",
        type=seconds_arg,
        default=d.checkpoint_interval,
        help="seconds between resume checkpoints (%(default)s)",
    )
    p.add_argument("--max-redirects", type=whole_arg, default=d.max_redirects)
    p.add_argument(
        "-H", "--header", type=_header, action="append", default=[], help="'Name: value'"
    )
    p.add_argument(
        "--no-resume", action="store_true", help="ignore a partial earlier download; start over"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing destination that nothing vouches for (a digest, or the "
        "record of blobdl's own download of it)",
    )
    p.add_argument(
        "--keep-bad", action="store_true", help="on a digest mismatch keep DEST.blobdl-bad"
    )
    p.add_argument(
        "--lock-timeout",
        type=seconds_arg,
        default=d.lock_timeout,
        help="seconds to wait while another blobdl writes the same destination (%(default)s)",
    )
    p.add_argument(
        "--cache-dir",
        type=path_arg,
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
    p.add_argument(
        "--ca-bundle",
        type=path_arg,
        help="PEM file of CA certificates to trust (default: $REQUESTS_CA_BUNDLE, then "
        "$CURL_CA_BUNDLE, else the system store)",
    )
    p.add_argument(
        "--no-verify-tls",
        action="store_true",
        help="do not verify TLS certificates (for testing only: anyone on the path can "
        "read and change what is sent and received)",
    )
    p.add_argument(
        "--client-cert", type=path_arg, metavar="PEM", help="client certificate (may hold the key)"
    )
    p.add_argument(
        "--client-key", type=path_arg, metavar="PEM", help="unencrypted key of --client-cert"
    )
    p.add_argument(
        "--proxy",
        metavar="URL",
        help="HTTP(S) proxy for every URL, [http://][user:pass@]host:port "
        "(default: HTTP(S)_PROXY, else ALL_PROXY)",
    )
    p.add_argument(
        "--no-env-proxy",
        action="store_true",
        help="ignore HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY from the environment",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on a Dask cluster: its scheduler (tcp://HOST:8786), or local[:N] for N "
        "workers started here; paths are as the workers see them (pip install 'blobdl[dask]')",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, no summary")
    p.add_argument("--json", action="store_true", help="progress as JSON lines on stdout")
    p.add_argument("--version", action="version", version=f"blobdl {__version__}")


def settings_from(args: argparse.Namespace) -> Settings:
    if getattr(args, "insecure_tls", False):
        logging.getLogger("blobdl").warning(
            "--insecure is deprecated for downloads: use --no-verify-tls (it means the same "
            "here; 'blobdl pull --insecure' means plain HTTP)"
        )
    try:
        return _settings(args)
    except UsageError as exc:
        raise in_options(exc) from None


def in_options(exc: UsageError) -> UsageError:
    """A settings error as the command line says it: ``--limit-rate``, not ``limit_rate``.
    A message that starts with a setting's name is a settings check's, and every such
    name in it is one (``min_part_size exceeds max_part_size``); any other is left as is."""
    options = _options()
    text = str(exc)
    if text.split(" ", 1)[0] not in options:
        return exc
    return UsageError(_NAME.sub(lambda m: options.get(m.group(), m.group()), text))


_NAME = re.compile(r"\b[a-z]+(?:_[a-z]+)*\b")


@functools.cache
def _options() -> dict[str, str]:
    """{a setting's name: the option that sets it}, from the parser itself."""
    fields = {f.name for f in dataclasses.fields(Settings)} | {"per_host"}
    options = {
        action.dest: max(action.option_strings, key=len)
        for action in build_parser()._actions
        if action.dest in fields and action.option_strings
    }
    return options | {"headers": "--header", "max_connections": "--connections"}


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(
        parts=args.parts,
        connections=args.connections,
        processes=args.processes,
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
        verify_tls=not (args.no_verify_tls or getattr(args, "insecure_tls", False)),
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
