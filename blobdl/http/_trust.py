"""Which CAs a verifying context trusts, and the variables that name them, checked.

``--ca-bundle`` first; else ``REQUESTS_CA_BUNDLE``, then ``CURL_CA_BUNDLE`` (a user moving
from huggingface-cli or curl, behind a TLS-inspecting proxy, has set one); else the
system's store as OpenSSL finds it, ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``.

OpenSSL reads the two variables for its default store (``load_default_certs``) and skips,
without a word, one that names nothing: a typo in the path, a file moved away. The download
then failed as a certificate "not trusted", naming neither the variable nor the path. curl
refuses a CA file it cannot load (exit 77, "error setting certificate file"); so does
blobdl, as it refuses a ``--ca-bundle`` it cannot load: a usage error naming both, before
any connection; a bundle variable alike. Only the default store reads ``SSL_CERT_*``: a
bundle replaces it, and ``--no-verify-tls`` needs none.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import NamedTuple

from ..errors import UsageError

FILE, FOLDERS = "SSL_CERT_FILE", "SSL_CERT_DIR"
# Bundles other tools read, in requests' order (``REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE``):
# each replaces the default store, as it does for requests (certifi's) and curl (its own).
BUNDLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


class Roots(NamedTuple):
    """Where a verifying context's trusted CAs come from: a context built for other roots
    is not the one called for (``_pool`` caches contexts by them)."""

    bundle: str  # a PEM file (or, named by a variable, a CA folder) replacing the default store
    named_by: str  # the variable that named ``bundle`` ("": the ca_bundle setting)
    file: str  # for the default store: SSL_CERT_FILE and SSL_CERT_DIR, as set
    folders: str
    emptied: tuple[str, ...] = ()  # of those, the ones set empty: read as unset

    def openssls_own(self) -> bool:
        """Whether OpenSSL's default store, as it loads it unasked (urllib3's, when given
        no context), is these roots: not when a variable is set empty."""
        return not self.bundle and not self.emptied


def roots(ca_bundle: str | None, environ: Mapping[str, str] = os.environ) -> Roots:
    """``--ca-bundle``, else the first bundle variable set, else the default store. An
    empty variable is unset: ``VAR=`` is how a shell or a Dockerfile unsets one."""
    if ca_bundle:
        return Roots(ca_bundle, "", "", "")
    for variable in BUNDLES:
        if environ.get(variable):
            return Roots(environ[variable], variable, "", "")
    emptied = tuple(name for name in (FILE, FOLDERS) if environ.get(name) == "")
    return Roots("", "", environ.get(FILE, ""), environ.get(FOLDERS, ""), emptied)


def check(trusted: Roots) -> None:
    """Refuse a variable naming what is not there, before any connection: a bundle or
    ``SSL_CERT_FILE`` a file, ``SSL_CERT_DIR`` folders (separated by ``os.pathsep``, as
    OpenSSL splits them). The ``ca_bundle`` setting is checked when it is loaded."""
    if trusted.named_by:
        if not os.path.isdir(trusted.bundle):  # a folder, requests loads as one (see load)
            _check_file(trusted.named_by, trusted.bundle)
    elif not trusted.bundle:
        _check_file(FILE, trusted.file)
        for folder in trusted.folders.split(os.pathsep):
            if folder and not os.path.isdir(folder):
                gone = not os.path.exists(folder)
                _refuse(FOLDERS, folder, "no such directory" if gone else "not a directory")


def load(context: ssl.SSLContext, trusted: Roots) -> None:
    """Load the roots into ``context``: a usage error, naming where they were named, if
    they give no certificate."""
    if not trusted.bundle:
        context.load_default_certs()
        _load_default_for_emptied(context, trusted.emptied)
        _check_loaded(context, trusted)
        return
    # requests loads a variable naming a folder as a CA folder (c_rehash's hashed names,
    # /etc/ssl/certs); OpenSSL reads its certificates only when asked for one.
    folder = bool(trusted.named_by) and os.path.isdir(trusted.bundle)
    try:
        if folder:
            context.load_verify_locations(capath=trusted.bundle)
        else:
            context.load_verify_locations(cafile=trusted.bundle)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        if trusted.named_by:
            _refuse(trusted.named_by, trusted.bundle, _why(exc))
        raise UsageError(f"cannot load CA bundle {trusted.bundle!r}: {exc}") from None


def _load_default_for_emptied(context: ssl.SSLContext, emptied: tuple[str, ...]) -> None:
    """OpenSSL reads ``SSL_CERT_FILE=`` as the file named "" (and ``SSL_CERT_DIR=`` as no
    folder): none, without a word, and every download failed as not trusted where the
    system's CAs are in that file alone (Fedora's, RHEL's). Empty is how a shell or a
    Dockerfile unsets a variable, so what it would have loaded unset is loaded here."""
    built_in = ssl.get_default_verify_paths()
    if FILE in emptied and os.path.isfile(built_in.openssl_cafile):
        context.load_verify_locations(cafile=built_in.openssl_cafile)
    if FOLDERS in emptied and os.path.isdir(built_in.openssl_capath):
        context.load_verify_locations(capath=built_in.openssl_capath)


def _check_loaded(context: ssl.SSLContext, trusted: Roots) -> None:
    """After ``load_default_certs``: a ``SSL_CERT_FILE`` that gave no certificate (not
    PEM, or empty) is refused too (OpenSSL loads a folder's certificates only when asked
    for one, so the store holds the file's alone)."""
    if trusted.file and context.cert_store_stats()["x509"] == 0:
        _refuse(FILE, trusted.file, "no certificate in it")


def _check_file(variable: str, file: str) -> None:
    if file and not os.path.isfile(file):
        _refuse(variable, file, "no such file" if not os.path.exists(file) else "not a file")


def _why(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return "no certificate in it" if reason == "NO_CERTIFICATE_OR_CRL_FOUND" else str(exc)


def _refuse(variable: str, path: str, why: str) -> None:
    raise UsageError(f"cannot load CA certificates from ${variable} {path!r}: {why}")
