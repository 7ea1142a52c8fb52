"""The system's CA store as OpenSSL finds it, checked: ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``.

OpenSSL reads the two variables for its default store (``load_default_certs``) and skips,
without a word, one that names nothing: a typo in the path, a file moved away. The download
then failed as a certificate "not trusted", naming neither the variable nor the path. curl
refuses a CA file it cannot load (exit 77, "error setting certificate file"); so does
blobdl, as it refuses a ``--ca-bundle`` it cannot load: a usage error naming both, before
any connection. Only the default store reads them: ``--ca-bundle`` replaces it, and
``--no-verify-tls`` needs none.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping

from ..errors import UsageError

FILE, FOLDERS = "SSL_CERT_FILE", "SSL_CERT_DIR"


def named(environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """The file and folders the environment names for the default store ("" if none):
    a context built for other values is not the one they call for."""
    return environ.get(FILE, ""), environ.get(FOLDERS, "")


def check_named(environ: Mapping[str, str] = os.environ) -> None:
    """Refuse a variable naming what is not there: ``SSL_CERT_FILE`` a file,
    ``SSL_CERT_DIR`` folders (separated by ``os.pathsep``, as OpenSSL splits them)."""
    file, folders = named(environ)
    if file and not os.path.isfile(file):
        _refuse(FILE, file, "no such file" if not os.path.exists(file) else "not a file")
    for folder in folders.split(os.pathsep):
        if folder and not os.path.isdir(folder):
            gone = not os.path.exists(folder)
            _refuse(FOLDERS, folder, "no such directory" if gone else "not a directory")


def check_loaded(context: ssl.SSLContext, environ: Mapping[str, str] = os.environ) -> None:
    """After ``load_default_certs``: a ``SSL_CERT_FILE`` that gave no certificate (not
    PEM, or empty) is refused too (OpenSSL loads a folder's certificates only when asked
    for one, so the store holds the file's alone)."""
    file, _ = named(environ)
    if file and context.cert_store_stats()["x509"] == 0:
        _refuse(FILE, file, "no certificate in it")


def _refuse(variable: str, path: str, why: str) -> None:
    raise UsageError(f"cannot load CA certificates from ${variable} {path!r}: {why}")
