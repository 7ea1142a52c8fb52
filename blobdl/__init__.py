"""blobdl: a parallel, fault-tolerant downloader for very large blobs."""

from __future__ import annotations

__version__ = "0.1.0"

from ._api import Downloader, DownloadResult, download
from ._progress import PartProgress, Progress
from .config import Settings, parse_size
from .errors import (
    BadResponse,
    BlobdlError,
    ConnectionFailed,
    DestinationExists,
    DestinationLocked,
    DigestMismatch,
    HTTPStatusError,
    InsufficientSpace,
    IntegrityError,
    Interrupted,
    LocalFileError,
    NetworkError,
    RemoteChanged,
    RetriesExhausted,
    Stalled,
    TLSError,
    TooManyRedirects,
    TruncatedBody,
    UsageError,
    WorkerCrashed,
)

__all__ = [
    "BadResponse",
    "BlobdlError",
    "ConnectionFailed",
    "DestinationExists",
    "DestinationLocked",
    "DigestMismatch",
    "DownloadResult",
    "Downloader",
    "HTTPStatusError",
    "InsufficientSpace",
    "IntegrityError",
    "Interrupted",
    "LocalFileError",
    "NetworkError",
    "PartProgress",
    "Progress",
    "RemoteChanged",
    "RetriesExhausted",
    "Settings",
    "Stalled",
    "TLSError",
    "TooManyRedirects",
    "TruncatedBody",
    "UsageError",
    "WorkerCrashed",
    "__version__",
    "download",
    "parse_size",
]
