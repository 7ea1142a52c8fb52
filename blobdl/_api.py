"""The library entry points: ``Downloader`` and ``download``.

This is the only module that ties the pieces together: check the input, probe the remote,
pick and check the destination, preallocate the temporary file, let the coordinator run the
parts, and rename the result into place (or remove it on any failure).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ._coordinator import Coordinator, ProgressCallback
from ._fileio import (
    check_destination,
    check_free_space,
    discard,
    finalize,
    open_temp,
    preallocate,
    safe_basename,
    temp_path,
)
from ._http import Remote, check_url, resolve
from ._plan import plan
from .config import Settings
from .errors import UsageError

DEFAULT_NAME = "blobdl.out"


@dataclasses.dataclass(frozen=True)
class DownloadResult:
    path: Path  # where the blob now is
    size: int  # its size in bytes
    elapsed: float  # seconds, probe included
    bytes_fetched: int  # body bytes received, retried and refetched bytes included
    retries: int  # failed attempts that were retried
    parts: int  # parts the blob was cut into
    url: str  # as asked
    final_url: str  # after redirects


class Downloader:
    """Downloads blobs with one frozen ``Settings``; safe to reuse for many downloads."""

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        base = settings or Settings()
        unknown = set(overrides) - Settings.field_names()
        if unknown:
            raise UsageError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        self.settings = dataclasses.replace(base, **overrides) if overrides else base

    def download(
        self,
        url: str,
        path: str | os.PathLike[str] | None = None,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> DownloadResult:
        """Download ``url`` to ``path`` (default: a safe name from the server or the URL,
        in the current directory). Raises a ``BlobdlError`` subclass on failure, leaving
        nothing at ``path``."""
        started = time.monotonic()
        check_url(url)
        dest = Path(path) if path is not None else None
        if dest is not None:
            check_destination(dest)
        remote = resolve(url, self.settings)
        if dest is None:
            dest = Path(default_name(remote))
            check_destination(dest)
        return self._fetch(remote, dest, started, on_progress)

    def _fetch(
        self, remote: Remote, dest: Path, started: float, on_progress: ProgressCallback | None
    ) -> DownloadResult:
        temp = temp_path(dest)
        if remote.size:
            check_free_space(dest, remote.size)
        fd: int | None = open_temp(temp)
        try:
            assert fd is not None
            preallocate(fd, remote.size or 0, temp)
            spans = plan(remote.size or 0, self.settings)
            coordinator = Coordinator(remote, spans, fd, str(temp), self.settings, on_progress)
            tally = coordinator.run() if remote.size != 0 else None
            size = tally.final_size if tally else 0
            finalize(fd, temp, dest, size)
            fd = None
        except BaseException:
            discard(fd, temp)
            raise
        return DownloadResult(
            path=dest,
            size=size,
            elapsed=time.monotonic() - started,
            bytes_fetched=tally.bytes_fetched if tally else 0,
            retries=tally.retries if tally else 0,
            parts=tally.parts if tally else 0,
            url=remote.url,
            final_url=remote.final_url,
        )


def default_name(remote: Remote) -> str:
    """A safe base name: Content-Disposition first, then the URL's last path segment."""
    for candidate in (
        remote.filename,
        unquote(urlsplit(remote.url).path),
        unquote(urlsplit(remote.final_url).path),
    ):
        name = safe_basename(candidate)
        if name:
            return name
    return DEFAULT_NAME


def download(
    url: str,
    path: str | os.PathLike[str] | None = None,
    *,
    on_progress: ProgressCallback | None = None,
    **settings: Any,
) -> DownloadResult:
    """Download ``url`` to ``path`` with default settings overridden by ``settings``."""
    return Downloader(**settings).download(url, path, on_progress=on_progress)
