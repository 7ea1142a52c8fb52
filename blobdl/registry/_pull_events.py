"""What a pull tells its caller as it goes: its start, its layers' engine events, and, on a
cluster, which worker said each. Records only, so that a pull on one machine never imports
the cluster's door (``_pull_cluster``: Dask's client and asyncio, ~20 ms at every start)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from ..events import Event


class PullStarted(NamedTuple):
    reference: str  # as resolved: host/namespace/model:tag
    manifest_digest: str
    blobs: int  # config and layers
    missing: int  # blobs not yet in the store
    bytes_needed: int  # their total size
    models_dir: str  # the store
    models_dir_from: str  # why that one: --models-dir, $OLLAMA_MODELS, default, service


class PullEvent(NamedTuple):
    digest: str  # the layer (sha256:<hex>) this engine event is about
    event: Event


class WorkerEvent(NamedTuple):
    """A pull's event (``PullStarted`` or ``PullEvent``) from the worker doing that pull."""

    worker: str  # its name
    event: Any


PullCallback = Callable[[PullStarted | PullEvent], None]
