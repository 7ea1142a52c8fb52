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
from ._pull import LayerResult, PullEvent, PullResult, PullStarted, pull
from ._registry import AuthRefused, ModelNotFound, UnsupportedManifest
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
    "AuthRefused",
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
    "LayerResult",
    "LocalFileError",
    "ModelNotFound",
    "NetworkError",
    "PartProgress",
    "PartRetried",
    "PartStalled",
    "Progress",
    "PullEvent",
    "PullResult",
    "PullStarted",
    "RemoteChanged",
    "RetriesExhausted",
    "Settings",
    "Stalled",
    "Started",
    "TLSError",
    "TooManyRedirects",
    "TruncatedBody",
    "UnsupportedManifest",
    "UsageError",
    "WorkerCrashed",
    "__version__",
    "download",
    "download_many",
    "parse_manifest",
    "parse_size",
    "pull",
]
