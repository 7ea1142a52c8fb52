"""The version, in a module of its own: no module needs to import the package ``__init__``."""

__version__ = "0.1.0"


def version() -> str:
    """This blobdl's version, asked of each Dask worker before a run (``batch._cluster_ask``)."""
    return __version__
