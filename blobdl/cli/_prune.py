"""``blobdl prune``: argument parsing and display only; the work is ``registry._prune``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from ..errors import EXIT_INTERRUPTED, EXIT_OK, BlobdlError
from ..processes._signals import interrupted
from ..registry._prune import PruneReport, prune
from ._args import Parser, path_arg
from ._display import error, tell
from ._pull import MODELS_DIR_HELP, WHY

DESCRIPTION = """\
Remove what pulls left behind in Ollama's store: abandoned partial downloads and stale lock
files in blobs-partial/, manifest scratch files of killed pulls (also those older blobdl
versions left beside a manifest, which make Ollama skip its own prune), blobs no manifest
names once older than an hour (Ollama's own grace; none while a manifest Ollama cannot read
is in the store or an ollama pull writes into blobs/), and empty manifest folders. Never what
a running pull holds. Lists each file and the bytes freed (stdout); exit 0."""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="blobdl prune",
        usage="%(prog)s [--models-dir DIR] [--dry-run]",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models-dir", type=path_arg, metavar="DIR", help=MODELS_DIR_HELP)
    p.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    return p


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = prune(args.models_dir, dry_run=args.dry_run)
    except BlobdlError as exc:
        error(exc)
        return exc.exit_code
    except KeyboardInterrupt as stop:
        error(interrupted(stop))
        return EXIT_INTERRUPTED
    show(report)
    return EXIT_OK


def show(report: PruneReport) -> None:
    verb = "would remove" if report.dry_run else "removed"
    tell(f"store {report.models_dir} ({WHY[report.models_dir_from]})")
    for removal in report.removed:
        tell(f"{verb}  {removal.path}  {removal.size} bytes  ({removal.what})")
    for kept in report.kept:
        tell(f"kept  {kept.path}  ({kept.why})")
    for path in report.unreadable:
        what = "list the folder of manifests" if os.path.isdir(path) else "read the manifest"
        tell(f"kept every unused blob: Ollama cannot {what} {path} (fix or remove it)")
    for path in report.strays:
        tell(f"note  {path} is no model's name: Ollama skips it with a warning")
    freed = "would free" if report.dry_run else "freed"
    tell(f"{freed} {report.freed} bytes in {len(report.removed)} files")
