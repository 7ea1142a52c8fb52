"""The registry side of a pull: the OCI distribution protocol as Ollama's registry speaks it.

Manifests, the ``WWW-Authenticate`` dance (Bearer tokens cached per scope, or Basic with
the Docker config's credentials) and where each blob really lives. Every request goes
through the HTTP edge (``blobdl.http``) like a download's: the same pool (TLS, client
certificate, CA bundle, proxy routes with ``NO_PROXY``), ``User-Agent: blobdl/<version>``,
error translation and retry policy; every URL a server names (a ``Location``, a token
realm) is checked by ``url_problem`` before anything is sent to it, and every JSON answer
field by field (``_schema``).

Credentials go to the registry's own origin (scheme, host and port, read as urllib3
connects) and the Docker config's password to the token realm it names (never over plain
HTTP when the registry was reached over https), nowhere else; the
user's ``-H`` headers go to the registry's origin, and only the harmless ones elsewhere. A
blob GET that answers with a redirect is resolved here, and the engine is given the storage
URL with only the headers that origin may have.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlencode, urlsplit

from .._redact import redact_url, secrets_of
from .._said import escaped, quoted
from ..config import MAX_BYTES, Settings, check_header
from ..errors import (
    AuthRefused,
    BadResponse,
    DigestMismatch,
    HTTPStatusError,
    ModelNotFound,
    TooManyRedirects,
    UnsupportedManifest,
    UsageError,
)
from ..http._document import Document, fetch, get_document
from ..http._error_words import said
from ..http._pool import make_pool, prepare_tls
from ..http._probe import first_byte_answer
from ..http._redirects import REDIRECTS
from ..http._remote import Remote
from ..http._routes import ProxyRoutes
from ..http._urls import (
    CROSS_ORIGIN_SAFE,
    headers_for_origin,
    redirect_target,
    same_origin,
    url_problem,
)
from ..processes._spawn import in_threads
from ._catalog import read as go_read
from ._credentials import basic, docker_credentials, no_credentials
from ._names import Reference
from ._schema import Int, Opt, check, go_string, parse_json

MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
# What a manifest request accepts. Never Docker's manifest list: a registry holding one under
# the tag answers a client that does not accept it with the list's linux/amd64 manifest, as
# it answers ``ollama pull`` (which accepts Docker's image manifest only). The OCI index is
# asked for so that one is refused saying what it is, not as "manifest unknown".
ACCEPTED = (*MANIFEST_TYPES, INDEX_TYPES[0])
MAX_DOCUMENT = 4 << 20  # bytes of a manifest or a token answer; a manifest is a few KB
# RFC 7235: challenges ("Scheme" then key=value or a token68), each value a token or a
# quoted string, spaces allowed around "="; a quote that is never closed is no value at all.
_TOKEN = r"[!#$%&'*+.^_`|~\w-]+"
_SCHEME = re.compile(rf"({_TOKEN})(?=[ \t,]|$)")
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # a scheme and an authority
_PARAM = re.compile(rf'({_TOKEN})[ \t]*=[ \t]*(?:"((?:[^"\\]|\\.)*)"|([^\s",]*))[ \t]*(?=,|$)')


# --- the manifest -----------------------------------------------------------------------------


class Blob(NamedTuple):
    digest: str  # sha256:<hex>
    size: int  # the manifest's, or (``Manifest.unsized``) the store's or the registry's
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
    # Blobs whose size the manifest does not give (0 until learned: ``with_sizes``).
    # Ollama never reads a layer's size to pull it (it asks the blob's HEAD); it writes the
    # manifest as served, so ``ollama list`` counts such a layer as 0 bytes, from our store too.
    unsized: frozenset[str] = frozenset()

    def with_sizes(self, sizes: dict[str, int]) -> Manifest:
        blobs = tuple(b._replace(size=sizes.get(b.digest, b.size)) for b in self.blobs)
        return dataclasses.replace(self, blobs=blobs)


# What we require of each blob Ollama's Go decoder reads (manifest.Manifest, manifest.Layer;
# ``_catalog.read``): a digest we fetch is always a sha256 (``BlobsPath``'s rule, in the
# lowercase its verification compares); a size, where given, a whole number a file can have.
# Ollama checks nothing else: no media type (the field's or the answer's Content-Type), no
# schemaVersion, a config only when it has a digest, no size (absent, null: its HEAD says).
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_SIZE = Int(0, MAX_BYTES)
_INT64 = Int(-(1 << 63), (1 << 63) - 1)
_HEAD = {"schemaVersion": Opt(_INT64), "mediaType": Opt(str), "manifests": Opt(object),
         "fsLayers": Opt(object)}  # fmt: skip
_LAYER = Opt({"digest": Opt(str), "size": Opt(_INT64), "mediaType": Opt(str), "from": Opt(str),
              "name": Opt(str)})  # fmt: skip
_TYPES = {"config": _LAYER, "layers": Opt([_LAYER])}  # the types Go's decoder requires


def parse_manifest(raw: bytes, where: str) -> Manifest:
    """The manifest in ``raw``, read as Ollama reads it whatever it was served as (a mirror
    or a static file server sends ``application/json``, or no type at all): its blobs are
    those of Go's reading (keys folded into fields, invalid UTF-8 as U+FFFD, a later key
    decoding into what an earlier one left), which the store's readers share. A document Go
    cannot decode is refused; the plain reading before it only says where a type is wrong.
    Documents that are no model's manifest, which Ollama would write as a model of no
    blobs, are refused saying what they are: an index, a schema 1 manifest, a manifest
    naming no blob."""

    def fail(message: str) -> BadResponse:
        return BadResponse(where, message)

    doc = parse_json(raw, "the manifest", fail, go=True)
    head = check(doc, _HEAD, "the manifest", fail)
    _require_a_manifest(head, where)
    read = go_read(raw, whole=True)
    if read is None:  # say where a type is wrong, if the plain reading finds it
        check(doc, _TYPES, "the manifest", fail)
        raise fail("the manifest is not one Ollama can read")
    config = read.get("config") or {}
    entries = [("config", config)] if config.get("digest") else []  # else Ollama skips it
    entries += [(f"layers[{i}]", e or {}) for i, e in enumerate(read.get("layers") or [])]
    blobs: dict[str, Blob] = {}
    sizes: dict[str, set[int]] = {}
    for name, entry in entries:
        digest = check(entry.get("digest"), _DIGEST, f"the manifest.{name}.digest", fail)
        size = check(entry.get("size"), Opt(_SIZE), f"the manifest.{name}.size", fail)
        blobs.setdefault(digest, Blob(digest, 0, go_string(entry.get("mediaType") or "")))
        sizes.setdefault(digest, set()).update([] if size is None else [size])
    if not blobs:
        raise UnsupportedManifest(where, "a manifest that names no blob (no config, no layers)")
    if two := next((d for d, given in sizes.items() if len(given) > 1), None):
        raise fail(f"the manifest gives {two} two sizes")
    unsized = frozenset(d for d, given in sizes.items() if not given)
    given = {d: next(iter(s)) for d, s in sizes.items() if s}
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    media_type = go_string(head["mediaType"] or "")
    return Manifest(raw, digest, media_type, tuple(blobs.values()), unsized).with_sizes(given)


def _require_a_manifest(head: dict[str, Any], where: str) -> None:
    """Refuse, by what the document holds, an index and a schema 1 manifest."""
    media_type = head["mediaType"] or ""
    if media_type in INDEX_TYPES or head["manifests"] is not None:
        what = quoted(media_type, 100) if media_type else "a document listing manifests"
        raise UnsupportedManifest(where, f"{what} (an index: pick one platform's manifest)")
    if head["schemaVersion"] == 1 or head["fsLayers"] is not None:
        raise UnsupportedManifest(where, "a schema 1 manifest (Docker's old format, no model)")


# --- the registry -----------------------------------------------------------------------------


def registry_url(ref: Reference, plain_http: bool) -> str:
    """``scheme://host[:port]``: https unless the reference says http://, or ``plain_http``
    (``--insecure``, as ``ollama pull --insecure``: plain HTTP, never unverified TLS)."""
    url = f"{'http' if plain_http else ref.scheme}://{ref.host}"
    problem = url_problem(url + "/")
    if problem:
        raise UsageError(f"invalid registry host {ref.host!r}: {problem}")
    return url


Headers = dict[str, str]
Secrets = Callable[[str], frozenset[str]]  # a URL -> what words about it never show


class Source(NamedTuple):
    """Where to GET a blob, with which headers, and what its look-up learned of it."""

    url: str
    headers: tuple[tuple[str, str], ...]
    # The blob as the registry's answer to its look-up described it, where the registry
    # serves it itself: its download's probe (None: it was sent elsewhere, or said less).
    remote: Remote | None = None


LOOKUPS = 8  # blob lookups in flight at once, at most (and never more than the budget)


class Registry:
    """One repository on one registry, with its credentials and cached tokens."""

    def __init__(self, ref: Reference, settings: Settings, *, plain_http: bool = False) -> None:
        self.ref, self.settings = ref, settings
        self.base = registry_url(ref, plain_http)
        # The CA store loaded once for every connection of the pull (its lookups open several
        # at once), not by urllib3 for each new one.
        prepare_tls(settings, self.base)
        self.pool = make_pool(settings)
        self.routes = ProxyRoutes.from_settings(settings)
        self.credentials = docker_credentials(ref.host)
        self.tokens: dict[str, str] = {}  # scope -> Bearer token
        self.scheme = ""  # the auth scheme the registry asked for ("" until it asks)
        self.realm = ""  # the token server of the last Bearer challenge ("" until one)
        self.scope = f"repository:{ref.repository}:pull"
        # Blob lookups run at once (``blob_sources``): a 401 to several of them is answered
        # by one token, fetched by the first; the others wait for it and use it.
        self._auth_lock = threading.Lock()

    # --- what a pull asks -------------------------------------------------------------------

    def manifest(self) -> Manifest:
        url = f"{self.base}/v2/{self.ref.repository}/manifests/{self.ref.manifest_reference}"
        accept = {"Accept": ", ".join(ACCEPTED)}
        try:
            answer = self._follow(url, lambda hop: self._send(hop, accept, MAX_DOCUMENT))
        finally:
            self.pool.clear()  # no socket of ours is inherited by the workers forked later
        if answer.status == 404:
            raise ModelNotFound(str(self.ref), _registry_says(answer, self._secrets))
        _require_ok(answer, self._secrets)
        manifest = parse_manifest(answer.body, url)
        served = answer.headers.get("Docker-Content-Digest", "")
        expected = f"sha256:{self.ref.digest}" if self.ref.digest else served
        if expected.startswith("sha256:") and expected != manifest.digest:
            raise DigestMismatch(escaped(expected, 100), manifest.digest)  # maybe the server's
        return manifest

    def blob_sources(self, blobs: Sequence[Blob]) -> list[Source]:
        """Where to GET each of ``blobs`` and with which headers: the registry asked about
        ``LOOKUPS`` of them at once, as far as ``connections`` (the pull's budget of
        sockets) allows. One after another, their round trips held the start of every blob
        up (a few ms each on loopback, 50 ms and more from a distant registry).
        The first failure, in ``blobs``' order, is raised. When it returns its threads have
        ended (a batch forks next) and the pool is cleared: no socket of ours is inherited
        by the processes forked later."""
        found: list[Source | BaseException | None] = [None] * len(blobs)

        def look(n: int) -> None:
            try:
                found[n] = self._blob_source(blobs[n])
            except BaseException as exc:  # raised below, on the caller's thread
                found[n] = exc

        # Under a rate limit, a connection a byte a second at most, as a batch's (``within_limit``)
        at_once = max(
            1, min(LOOKUPS, self.settings.connections, self.settings.limit_rate or LOOKUPS)
        )
        try:
            for start in range(0, len(blobs), at_once):
                group = range(start, min(len(blobs), start + at_once))
                if len(group) == 1:
                    look(group[0])
                else:
                    in_threads([functools.partial(look, n) for n in group])
        finally:
            self.pool.clear()
        sources = []
        for answer in found:
            if isinstance(answer, BaseException):
                raise answer
            assert answer is not None
            sources.append(answer)
        return sources

    def _blob_source(self, blob: Blob) -> Source:
        """Where to GET ``blob`` and with which headers. A redirect to another origin (the
        presigned storage URL) is returned with only what that origin may be sent. Where
        the registry serves the blob itself, its answer to the look-up (``bytes=0-0``) is
        what its download's probe would learn, kept as that probe: one round trip less
        per blob (when it describes the blob the manifest gives)."""
        url = f"{self.base}/v2/{self.ref.repository}/blobs/{blob.digest}"
        answer = self._send(url, {"Range": "bytes=0-0"}, 0)
        if answer.status in REDIRECTS:
            target = redirect_target(url, _location(answer))
            return Source(target, tuple(self.headers_for(target).items()))
        if answer.status == 404:
            says = _registry_says(answer, self._secrets)
            words = ", ".join(w for w in (f"no blob {blob.digest}", says) if w)
            raise ModelNotFound(str(self.ref), f"the registry has {words}")
        if answer.status not in (200, 206, 416):  # 416: an empty blob has no byte 0
            _require_ok(answer, self._secrets)
        headers = tuple(self.headers_for(url).items())
        remote = first_byte_answer(url, headers, answer.status, answer.headers, answer.answer_time)
        return Source(url, headers, remote if remote and remote.size == blob.size else None)

    def blob_size(self, blob: Blob) -> int:
        """The size of ``blob`` as the answer to its first byte says it (where the registry
        sends it, storage's): for a manifest that gives none, as Ollama learns it from its
        HEAD. The blob's digest is checked when it lands, whatever size it was said to be."""
        url = f"{self.base}/v2/{self.ref.repository}/blobs/{blob.digest}"
        answer = self._follow(url, lambda hop: self._send(hop, {"Range": "bytes=0-0"}, 0))
        if answer.status == 404:
            says = _registry_says(answer, self._secrets)
            words = ", ".join(w for w in (f"no blob {blob.digest}", says) if w)
            raise ModelNotFound(str(self.ref), f"the registry has {words}")
        if answer.status != 416:
            _require_ok(answer, self._secrets)
        size = _size_said(answer)
        if size is None:
            raise BadResponse(answer.url, f"the manifest gives no size for {blob.digest}, and "
                                          f"nor does the answer to its first byte")  # fmt: skip
        return size

    def forget_token(self) -> None:
        """The token expired (a 401 mid-pull): the next request fetches a new one."""
        self.tokens.pop(self.scope, None)

    def headers_for(self, url: str) -> Headers:
        """What a request to ``url`` carries: the user's headers as a download's would be
        (all of them on the registry's origin, the harmless ones elsewhere), and on the
        registry's origin the credential it asked for (which replaces a user's)."""
        headers = dict(headers_for_origin(self.settings.headers, self.base, url))
        if not same_origin(url, self.base):
            return headers
        if self.scheme == "bearer" and self.scope in self.tokens:
            headers = _with_auth(headers, f"Bearer {self.tokens[self.scope]}")
        elif self.scheme == "basic" and self.credentials:
            headers = _with_auth(headers, self._password_for(url))
        return headers

    # --- requests ---------------------------------------------------------------------------

    def _follow(self, url: str, send: Callable[[str], Document]) -> Document:
        """``send`` to ``url`` and to every ``Location`` after it (each checked first)."""
        for _hop in range(self.settings.max_redirects + 1):
            answer = send(url)
            if answer.status not in REDIRECTS:
                return answer
            url = redirect_target(url, _location(answer))
        raise TooManyRedirects(url, self.settings.max_redirects)

    def _send(self, url: str, extra: Headers, limit: int) -> Document:
        """One request, authenticating once if the registry answers 401."""
        sent = self.headers_for(url)
        answer = self._get(url, {**extra, **sent}, limit)
        if answer.status != 401 or not same_origin(url, self.base):
            return answer
        with self._auth_lock:
            if self.headers_for(url) == sent:  # else another lookup has renewed it meanwhile
                self._authenticate(url, answer.headers.get("WWW-Authenticate", ""))
        answer = self._get(url, {**extra, **self.headers_for(url)}, limit)
        if answer.status == 401:
            raise AuthRefused(url, self._refused())
        return answer

    def _secrets(self, url: str) -> frozenset[str]:
        """What a server's words never show of a request to ``url`` (it may echo them):
        the user's headers (but the harmless ones), the tokens, the Docker config's
        password, and ``url``'s own secrets."""
        given = [v for name, v in self.settings.headers if name.lower() not in CROSS_ORIGIN_SAFE]
        ours = [f"Bearer {token}" for token in self.tokens.values()]
        if self.credentials:
            ours += [basic(self.credentials), self.credentials[1]]
        return secrets_of(url, [*given, *ours])

    def _refused(self) -> str:
        """What the registry refused when it answers 401 to what it asked for: the token
        (whose server, for which credentials) or the Docker config's Basic credentials.
        Anonymous, a registry answers so for a repository that is private or absent alike
        (Docker: "repository does not exist or may require 'docker login'")."""
        host = self.ref.host
        if self.scheme == "basic":
            return f"the registry refused the Docker config's credentials for {host}"
        given = (
            f"for the Docker config's credentials for {host}"
            if self.credentials
            else f"with {no_credentials(host)}: the repository is private or does not exist"
        )
        return f"the registry refused the token from {urlsplit(self.realm).netloc} {given}"

    def _get(self, url: str, headers: Headers, limit: int) -> Document:
        # A manifest or token has the stall timeout to arrive whole, not just between bytes.
        within = self.settings.stall_timeout
        return fetch(self.settings, lambda: get_document(self.pool, url, headers, limit, within))

    def _authenticate(self, url: str, header: str) -> None:
        """Answer the challenges of a 401: Bearer (with a realm) if offered, else Basic."""
        offered = dict(reversed(challenges(header)))  # the first of each scheme
        bearer, basic = offered.get("bearer", {}), offered.get("basic")
        if bearer.get("realm"):
            self.scheme = "bearer"
            scope = bearer.get("scope") or self.scope
            token = self._token(url, bearer["realm"], bearer.get("service"), scope)
            self.tokens[self.scope] = token
        elif basic is not None:
            self.scheme = "basic"
            if self.credentials is None:
                raise AuthRefused(url, no_credentials(self.ref.host))
        else:
            raise AuthRefused(url, f"unsupported challenge {quoted(header, 100)}")

    def _token(self, url: str, realm: str, service: str | None, scope: str) -> str:
        if not _ABSOLUTE.match(realm):  # Docker and Ollama read it as a URL of its own
            raise BadResponse(
                url, f"token realm {quoted(realm, 100)} is not an absolute http(s) URL"
            )
        realm = redirect_target(url, realm, "token realm")  # ambiguous, not http(s): refused
        self.realm = realm
        query = urlencode({k: v for k, v in (("service", service), ("scope", scope)) if v})
        token_url = f"{realm}{'&' if '?' in realm else '?'}{query}"

        def headers(hop: str) -> Headers:
            given = dict(headers_for_origin(self.settings.headers, self.base, hop))
            if self.credentials and same_origin(hop, realm):
                given = _with_auth(given, self._password_for(hop))
            return given

        answer = self._follow(token_url, lambda hop: self._get(hop, headers(hop), MAX_DOCUMENT))
        if answer.status in (401, 403):
            words = said(answer.body, self._secrets(answer.url))
            and_says = f" and says {words}" if words else ""
            raise AuthRefused(realm, f"the token server answered {answer.status}{and_says}")
        _require_ok(answer, self._secrets)
        return _token_from(answer)

    def _password_for(self, url: str) -> str:
        """The Docker config's Basic credential, for ``url``: never in clear text to a proxy,
        nor to plain HTTP when the registry was reached over https. Refused rather than
        left out: a token asked for anonymously would end in a refusal that hides why, and a
        realm that downgrades is a misconfiguration or an attack the user should hear of."""
        assert self.credentials is not None
        if urlsplit(self.base).scheme == "https" and urlsplit(url).scheme == "http":
            raise AuthRefused(
                url,
                f"the https registry {self.ref.host} names a token realm over plain HTTP: the "
                f"Docker config's password would go to it in clear text",
            )
        proxy = self.routes.proxy_for(url)
        if proxy is not None and urlsplit(url).scheme == "http":
            host = urlsplit(url).netloc
            raise AuthRefused(
                url,
                f"the Docker config's password for {host} would reach proxy "
                f"{redact_url(proxy)} in clear text (use https, or name {host} in NO_PROXY)",
            )
        return basic(self.credentials)


def challenges(header: str) -> list[tuple[str, dict[str, str]]]:
    """The challenges of a ``WWW-Authenticate`` value (several header lines arrive joined by
    commas): [(scheme in lowercase, {parameter in lowercase: value})], in order."""
    found: list[tuple[str, dict[str, str]]] = []
    pos = 0
    while pos < len(header):
        if header[pos] in " \t,":
            pos += 1
        elif found and (param := _PARAM.match(header, pos)):
            quoted = param.group(2)
            value = param.group(3) if quoted is None else re.sub(r"\\(.)", r"\1", quoted)
            found[-1][1].setdefault(param.group(1).lower(), value)
            pos = param.end()
        elif scheme := _SCHEME.match(header, pos):
            found.append((scheme.group(1).lower(), {}))
            pos = scheme.end()
        else:  # not a parameter we can read (an unclosed quote): up to the next comma
            comma = header.find(",", pos)
            pos = len(header) if comma < 0 else comma + 1
    return found


_TOKEN_ANSWER = {"token": Opt(str), "access_token": Opt(str)}


def _token_from(answer: Document) -> str:
    def fail(message: str) -> BadResponse:
        return BadResponse(answer.url, message)

    what = "the token answer"
    doc = check(parse_json(answer.body, what, fail), _TOKEN_ANSWER, what, fail)
    token = doc["token"] or doc["access_token"]
    if not token:
        raise fail("the token server sent no token")
    try:
        check_header("Authorization", f"Bearer {token}")
    except UsageError:
        raise fail(
            "the token holds characters a header cannot carry (control characters, non-latin-1)"
        ) from None
    return str(token)


def _with_auth(headers: Headers, value: str) -> Headers:
    kept = {name: v for name, v in headers.items() if name.lower() != "authorization"}
    return {**kept, "Authorization": value}


def _size_said(answer: Document) -> int | None:
    """The whole size an answer to ``Range: bytes=0-0`` states: a 206's Content-Range, a
    200's Content-Length, a 416's ``bytes */N`` (an empty blob has no byte 0)."""
    if answer.status in (206, 416):
        total = re.fullmatch(
            r"bytes (?:0-0|\*)/(\d{1,19})", answer.headers.get("Content-Range", "")
        )
        return int(total.group(1)) if total else None
    length = answer.headers.get("Content-Length", "")
    return int(length) if answer.status == 200 and re.fullmatch(r"\d{1,19}", length) else None


def _location(answer: Document) -> str:
    location = answer.headers.get("Location")
    if not location:
        raise BadResponse(answer.url, f"redirect {answer.status} without Location")
    return location


def _require_ok(answer: Document, secrets: Secrets) -> None:
    """A 2xx, else the error it is, with what the registry says of it (``secrets``: what
    its words never show)."""
    if answer.status in (401, 403):
        words = _registry_says(answer, secrets)
        raise AuthRefused(answer.url, f"HTTP {answer.status}{': ' if words else ''}{words}")
    if not 200 <= answer.status < 300:
        raise HTTPStatusError(answer.status, answer.url, said=_registry_says(answer, secrets))


def _registry_says(answer: Document, secrets: Secrets) -> str:
    words = said(answer.body, secrets(answer.url))
    return f"the registry says {words}" if words else ""
