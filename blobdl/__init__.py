"""blobdl: a parallel, fault-tolerant downloader for very large blobs."""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .batch._scheduler import BatchEvent, Item, ItemResult, download_many, parse_manifest
from .config import Settings, parse_size
from .engine._download import Downloader, download
from .errors import (
    AuthRefused,
    BadRedirect,
    BadResponse,
    BlobdlError,
    ClusterError,
    ConnectionFailed,
    ConnectionForbidden,
    DestinationExists,
    DestinationLocked,
    DigestMismatch,
    EntryNotFound,
    GatedRepository,
    HTTPStatusError,
    InsufficientSpace,
    IntegrityError,
    Interrupted,
    LocalFileError,
    ModelNotFound,
    NetworkError,
    OfflineNotCached,
    OutOfResources,
    ProxyAuthRequired,
    ProxyNotHTTP,
    ProxyRefused,
    RemoteChanged,
    RepositoryNotFound,
    RetriesExhausted,
    RevisionNotFound,
    Stalled,
    TLSError,
    TooManyRedirects,
    TruncatedBody,
    UnsupportedManifest,
    UsageError,
    WorkerCrashed,
)
from .events import (
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

if TYPE_CHECKING:
    from .hf._download import HfEvent, HfFile, HfResult, HfStarted, hf_download
    from .registry._pull import LayerResult, PullResult, pull, pull_every_worker
    from .registry._pull_events import PullEvent, PullStarted, WorkerEvent

# The registry's and Hugging Face's doors are imported when first used: a download, or a
# manifest of thousands of small files, does not pay for them at every start (~20 ms).
_LATER = {
    **dict.fromkeys(("HfEvent", "HfFile", "HfResult", "HfStarted", "hf_download"), ".hf._download"),
    **dict.fromkeys(("LayerResult", "PullResult", "pull", "pull_every_worker"), ".registry._pull"),
    **dict.fromkeys(("PullEvent", "PullStarted", "WorkerEvent"), ".registry._pull_events"),
}


def __getattr__(name: str) -> Any:
    module = _LATER.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AuthRefused",
    "BadRedirect",
    "BadResponse",
    "BatchEvent",
    "BlobdlError",
    "ClusterError",
    "ConnectionFailed",
    "ConnectionForbidden",
    "DestinationExists",
    "DestinationLocked",
    "DigestMismatch",
    "DownloadResult",
    "Downloader",
    "EntryNotFound",
    "Event",
    "Failed",
    "Finished",
    "GatedRepository",
    "HTTPStatusError",
    "HfEvent",
    "HfFile",
    "HfResult",
    "HfStarted",
    "InsufficientSpace",
    "IntegrityError",
    "Interrupted",
    "Item",
    "ItemResult",
    "LayerResult",
    "LocalFileError",
    "ModelNotFound",
    "NetworkError",
    "OfflineNotCached",
    "OutOfResources",
    "PartProgress",
    "PartRetried",
    "PartStalled",
    "Progress",
    "ProxyAuthRequired",
    "ProxyNotHTTP",
    "ProxyRefused",
    "PullEvent",
    "PullResult",
    "PullStarted",
    "RemoteChanged",
    "RepositoryNotFound",
    "RetriesExhausted",
    "RevisionNotFound",
    "Settings",
    "Stalled",
    "Started",
    "TLSError",
    "TooManyRedirects",
    "TruncatedBody",
    "UnsupportedManifest",
    "UsageError",
    "WorkerCrashed",
    "WorkerEvent",
    "__version__",
    "download",
    "download_many",
    "hf_download",
    "parse_manifest",
    "parse_size",
    "pull",
    "pull_every_worker",
]

# A library's records are its caller's to show: without a handler of the caller's own, Python's
# last-resort handler would print blobdl's warnings on stderr (urllib3 and s3transfer do this too).
logging.getLogger(__name__).addHandler(logging.NullHandler())
