"""blobdl: a parallel, fault-tolerant downloader for very large blobs."""

from __future__ import annotations

__version__ = "0.1.0"

from ._api import Downloader, download
from ._batch import BatchEvent, Item, ItemResult, download_many, parse_manifest
from ._events import (
    DownloadResult,
    Event,
    Failed,
    Finished,
    PartProgress,
    PartRetried,
    PartStalled,
    Progress,
    Started,
)
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
    "BatchEvent",
    "BlobdlError",
    "ConnectionFailed",
    "DestinationExists",
    "DestinationLocked",
    "DigestMismatch",
    "DownloadResult",
    "Downloader",
    "Event",
    "Failed",
    "Finished",
    "HTTPStatusError",
    "InsufficientSpace",
    "IntegrityError",
    "Interrupted",
    "Item",
    "ItemResult",
    "LocalFileError",
    "NetworkError",
    "PartProgress",
    "PartRetried",
    "PartStalled",
    "Progress",
    "RemoteChanged",
    "RetriesExhausted",
    "Settings",
    "Stalled",
    "Started",
    "TLSError",
    "TooManyRedirects",
    "TruncatedBody",
    "UsageError",
    "WorkerCrashed",
    "__version__",
    "download",
    "download_many",
    "parse_manifest",
    "parse_size",
]
