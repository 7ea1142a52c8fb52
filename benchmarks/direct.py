"""Every tool the harness runs goes straight to the server: no proxy from the environment.

The servers are the harness's own, on loopback, or the user's ``--url``, which curl is told
to reach with ``--noproxy '*'``. blobdl, aria2c, axel and hf_transfer read the proxy
variables, each in its own way (aria2c's ``--all-proxy=`` does not override
``http_proxy``): a proxy set on the host for other work would put some tools behind it and
not others, and compare unlike things. Each entry point calls ``go_direct`` first, so
nothing it starts sees them.
"""

from __future__ import annotations

import os

PROXY_VARIABLES = tuple(
    spelled
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
    for spelled in (name, name.lower())
)


def go_direct() -> None:
    """Drop the proxy variables from this process's environment (and its children's)."""
    for name in PROXY_VARIABLES:
        os.environ.pop(name, None)
