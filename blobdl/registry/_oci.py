"""The registry side of a pull: the OCI distribution protocol as Ollama's registry speaks it.

Manifests, the ``WWW-Authenticate`` dance (Bearer tokens cached per scope, or Basic with
the Docker config's credentials) and where each blob really lives. Credentials go to the
registry's own origin (scheme, host and port) and to the token realm it names, nowhere else:
a blob GET that answers with a redirect is resolved here, and the engine is given the
storage URL *without* any Authorization header.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import time
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode, urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError, InsecureRequestWarning
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.util.ssl_ import create_urllib3_context

from ..config import Settings
from ..errors import (
    AuthRefused,
    BadResponse,
    BlobdlError,
    ConnectionFailed,
    DigestMismatch,
    HTTPStatusError,
    ModelNotFound,
    TLSError,
    TooManyRedirects,
    UnsupportedManifest,
    UsageError,
)
from ._names import Reference

MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MAX_MANIFEST = 4 << 20  # bytes; a manifest is a few KB
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")  # fullmatch: "$" passes a final "\n"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')


# --- the manifest -----------------------------------------------------------------------------


class Blob(NamedTuple):
    digest: str  # sha256:<hex>
    size: int
    media_type: str

    @property
    def hex(self) -> str:
        return self.digest.partition(":")[2]


@dataclass(frozen=True)
class Manifest:
    raw: bytes  # exactly as served: Ollama reads these bytes back
    digest: str  # sha256:<hex> of raw
    media_type: str
    blobs: tuple[Blob, ...]  # the config first, then the layers; no duplicates


def parse_manifest(raw: bytes, content_type: str, where: str) -> Manifest:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadResponse(where, "the manifest is not JSON") from None
    if not isinstance(doc, dict):
        raise BadResponse(where, "the manifest is not a JSON object")
    media_type = doc.get("mediaType") or content_type.split(";")[0].strip()
    if media_type not in MANIFEST_TYPES or doc.get("schemaVersion") != 2:
        what = f"{media_type} (an index: pick one platform's manifest)"
        raise UnsupportedManifest(where, what if media_type in INDEX_TYPES else str(media_type))
    entries = [doc.get("config"), *(doc.get("layers") or [])]
    blobs: dict[str, Blob] = {}
    for entry in entries:
        blob = _blob(entry, where)
        blobs.setdefault(blob.digest, blob)
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    return Manifest(raw, digest, media_type, tuple(blobs.values()))


def _blob(entry: Any, where: str) -> Blob:
    ok = isinstance(entry, dict)
    digest, size = (entry.get("digest"), entry.get("size")) if ok else (None, None)
    if not (isinstance(digest, str) and _DIGEST.fullmatch(digest)):
        raise BadResponse(where, f"manifest entry without a sha256 digest: {entry!r:.200}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadResponse(where, f"manifest entry {digest} without a valid size")
    return Blob(digest, size, str(entry.get("mediaType", "")))


# --- credentials ------------------------------------------------------------------------------


def docker_credentials(host: str) -> tuple[str, str] | None:
    """``auths.<host>.auth`` from ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``
    (credential helpers are not supported)."""
    folder = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    path = Path(folder) / "config.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read Docker config {path}: {exc}") from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    for key, entry in (auths or {}).items():
        if _config_host(key) == host.lower() and isinstance(entry, dict):
            return _decode_auth(entry, path)
    return None


def _config_host(key: str) -> str:
    """``https://host:port/v1/`` -> ``host:port``: keys are written both ways."""
    return key.split("://", 1)[-1].split("/", 1)[0].lower()


def _decode_auth(entry: dict[str, Any], path: Path) -> tuple[str, str] | None:
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        try:
            user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            sep = ""
        if not sep:
            raise UsageError(f"Docker config {path}: an 'auth' that is not base64 user:password")
        return user, password
    if isinstance(entry.get("username"), str):
        return entry["username"], str(entry.get("password", ""))
    return None


def _basic(credentials: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(":".join(credentials).encode()).decode()


# --- HTTP -------------------------------------------------------------------------------------


def origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port (default ports filled in): what a credential is bound to."""
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def make_pool(settings: Settings) -> urllib3.PoolManager:
    """A small pool for manifest, token and blob-location requests (not blob bytes)."""
    timeout = urllib3.Timeout(connect=settings.connect_timeout, read=settings.stall_timeout)
    options: dict[str, Any] = {"retries": False, "timeout": timeout}
    if not settings.verify_tls:
        warnings.filterwarnings("ignore", category=InsecureRequestWarning)
        options["ssl_context"] = create_urllib3_context(cert_reqs=0)
        options["cert_reqs"] = "CERT_NONE"
    elif settings.ca_bundle:
        options["ca_certs"] = settings.ca_bundle
    if settings.client_cert:
        options["cert_file"], options["key_file"] = settings.client_cert, settings.client_key
    proxy = settings.proxy
    if proxy is None and settings.trust_env:
        proxies = urllib.request.getproxies_environment()
        proxy = proxies.get("https") or proxies.get("http")
    if proxy:
        return urllib3.ProxyManager(proxy if "://" in proxy else f"http://{proxy}", **options)
    return urllib3.PoolManager(**options)


class _Response(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class Registry:
    """One repository on one registry, with its credentials and cached tokens."""

    def __init__(self, ref: Reference, settings: Settings) -> None:
        self.ref, self.settings = ref, settings
        self.pool = make_pool(settings)
        self.base = ref.base_url
        self.credentials = docker_credentials(ref.host)
        self.tokens: dict[str, str] = {}  # scope -> Bearer token
        self.scheme = ""  # the auth scheme the registry asked for ("" until it asks)
        self.scope = f"repository:{ref.repository}:pull"

    # --- what a pull asks -------------------------------------------------------------------

    def manifest(self) -> Manifest:
        url = f"{self.base}/v2/{self.ref.repository}/manifests/{self.ref.manifest_reference}"
        accept = ", ".join(MANIFEST_TYPES + INDEX_TYPES)
        response = self._follow(url, {"Accept": accept}, limit=MAX_MANIFEST)
        if response.status == 404:
            raise ModelNotFound(str(self.ref))
        self._require_ok(response, url)
        manifest = parse_manifest(response.body, response.headers.get("content-type", ""), url)
        served = response.headers.get("docker-content-digest", "")
        expected = f"sha256:{self.ref.digest}" if self.ref.digest else served
        if expected.startswith("sha256:") and expected != manifest.digest:
            raise DigestMismatch(expected, manifest.digest)
        return manifest

    def blob_source(self, blob: Blob) -> tuple[str, tuple[tuple[str, str], ...]]:
        """Where to GET ``blob`` and with which headers. A redirect to another origin (the
        presigned storage URL) is returned bare: no credential goes with it."""
        url = f"{self.base}/v2/{self.ref.repository}/blobs/{blob.digest}"
        response = self._send(url, {"Range": "bytes=0-0"}, limit=0)
        if response.status in _REDIRECTS and "location" in response.headers:
            target = urljoin(url, response.headers["location"])
            return target, self.auth_headers(target)
        if response.status == 404:
            raise ModelNotFound(str(self.ref), f"the registry has no blob {blob.digest}")
        if response.status not in (200, 206):
            self._require_ok(response, url)
        return url, self.auth_headers(url)

    def forget_token(self) -> None:
        """The token expired (a 401 mid-pull): the next request fetches a new one."""
        self.tokens.pop(self.scope, None)

    def auth_headers(self, url: str) -> tuple[tuple[str, str], ...]:
        if origin(url) != origin(self.base):
            return ()
        if self.scheme == "bearer" and self.scope in self.tokens:
            return (("Authorization", f"Bearer {self.tokens[self.scope]}"),)
        if self.scheme == "basic" and self.credentials:
            return (("Authorization", _basic(self.credentials)),)
        return ()

    # --- requests ---------------------------------------------------------------------------

    def _follow(self, url: str, headers: dict[str, str], limit: int) -> _Response:
        for _hop in range(self.settings.max_redirects + 1):
            response = self._send(url, headers, limit)
            if response.status not in _REDIRECTS or "location" not in response.headers:
                return response
            url = urljoin(url, response.headers["location"])
        raise TooManyRedirects(url, self.settings.max_redirects)

    def _send(self, url: str, headers: dict[str, str], limit: int) -> _Response:
        """One request, authenticating once if the registry answers 401."""
        response = self._get(url, {**headers, **dict(self.auth_headers(url))}, limit)
        if response.status != 401 or origin(url) != origin(self.base):
            return response
        self._authenticate(url, response.headers.get("www-authenticate", ""))
        response = self._get(url, {**headers, **dict(self.auth_headers(url))}, limit)
        if response.status == 401:
            raise AuthRefused(url, "the registry refused the credentials")
        return response

    def _authenticate(self, url: str, challenge: str) -> None:
        scheme, _, rest = challenge.strip().partition(" ")
        params = {m.group(1).lower(): m.group(2) or m.group(3) for m in _PARAM.finditer(rest)}
        self.scheme = scheme.lower()
        if self.scheme == "basic":
            if self.credentials is None:
                raise AuthRefused(url, f"no credentials for {self.ref.host} in the Docker config")
        elif self.scheme == "bearer" and params.get("realm"):
            scope = params.get("scope") or self.scope
            self.tokens[self.scope] = self._token(params["realm"], params.get("service"), scope)
        else:
            raise AuthRefused(url, f"unsupported challenge {challenge!r:.100}")

    def _token(self, realm: str, service: str | None, scope: str) -> str:
        if urlsplit(realm).scheme not in ("http", "https"):
            raise AuthRefused(realm, "the token realm is not an http(s) URL")
        query = urlencode({k: v for k, v in (("service", service), ("scope", scope)) if v})
        url = f"{realm}{'&' if '?' in realm else '?'}{query}"
        headers = {"Authorization": _basic(self.credentials)} if self.credentials else {}
        response = self._get(url, headers, MAX_MANIFEST)
        if response.status in (401, 403):
            raise AuthRefused(realm, f"the token server answered {response.status}")
        self._require_ok(response, realm)
        try:
            doc = json.loads(response.body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise BadResponse(realm, "the token server sent no token")
        return token

    def _require_ok(self, response: _Response, url: str) -> None:
        if response.status in (401, 403):
            raise AuthRefused(url, f"HTTP {response.status}")
        if response.status != 200 and not 200 <= response.status < 300:
            raise HTTPStatusError(response.status, url)

    def _get(self, url: str, headers: dict[str, str], limit: int) -> _Response:
        """GET with the engine's retry budget for connection failures and 5xx/429."""
        attempt = 0
        while True:
            try:
                response = self._get_once(url, headers, limit)
                if response.status < 500 and response.status != 429:
                    return response
                error: BlobdlError = HTTPStatusError(response.status, url)
            except TLSError:
                raise
            except ConnectionFailed as exc:
                error = exc
            attempt += 1
            if attempt > self.settings.retries:
                if isinstance(error, HTTPStatusError):
                    return response
                raise error
            time.sleep(min(attempt**2 * self.settings.backoff_unit, self.settings.max_backoff))

    def _get_once(self, url: str, headers: dict[str, str], limit: int) -> _Response:
        try:
            response = self.pool.request(
                "GET", url, headers=headers, redirect=False, preload_content=False
            )
        except Urllib3SSLError as exc:
            raise TLSError(url, str(exc)) from None
        except HTTPError as exc:
            raise ConnectionFailed(url, str(exc)) from None
        try:
            body = response.read(limit + 1) if limit else b""
        except HTTPError as exc:
            raise ConnectionFailed(url, str(exc)) from None
        finally:
            response.close()  # unread bodies (a blob) must not come back to the pool
        if len(body) > limit:
            raise BadResponse(url, f"more than {limit} bytes where a small document was expected")
        headers_out = {k.lower(): v for k, v in response.headers.items()}
        return _Response(response.status, headers_out, body)
