"""What a destination given no path is called: the server's name for the blob, made safe.

A single download, a batch's item and a cluster's task all name it this way; the name is
reduced to a plain file name by ``_destination.safe_basename``, so a remote never chooses
the directory.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from ..http._remote import Remote
from ._destination import safe_basename

DEFAULT_NAME = "blobdl.out"


def name_from_url(url: str) -> str:
    """A safe base name from the URL alone (a cache hit makes no request to ask the server)."""
    return safe_basename(unquote(urlsplit(url).path)) or DEFAULT_NAME


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
