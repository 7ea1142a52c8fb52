"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

import json
import random
from hashlib import sha256
from typing import Any, NamedTuple

from hypothesis import strategies as st

from blobdl import Settings

MAX_PARTS = 4096  # keep generated plans small enough to check quickly


@st.composite
def sized_plans(draw: st.DrawFn) -> tuple[int, Settings]:
    """A blob size and plan settings whose plan has at most ``MAX_PARTS`` parts."""
    size = draw(st.integers(min_value=0, max_value=10**12))
    floor = max(1, -(-size // MAX_PARTS))
    low = draw(st.integers(min_value=1, max_value=max(1, 2 * floor)))
    high = draw(st.integers(min_value=max(low, floor), max_value=max(low, floor) * 4))
    parts = draw(st.none() | st.integers(min_value=1, max_value=256))
    target = draw(st.integers(min_value=1, max_value=64))
    return size, Settings(min_part_size=low, max_part_size=high, parts=parts, target_parts=target)


backoff_settings = st.builds(
    Settings,
    backoff_unit=st.floats(min_value=0, max_value=1, allow_nan=False),
    max_backoff=st.floats(min_value=0, max_value=60, allow_nan=False),
)


# --- the hostile server: one scripted fault per request (integration/test_hostile.py) ------

#: Status codes a hostile server answers with, and Retry-After values it attaches.
HOSTILE_STATUSES = (401, 403, 404, 410, 416, 429, 500, 503)
RETRY_AFTERS = (
    "0",
    "1",
    "-1",
    "nan",
    "inf",
    "1e400",
    "soon",
    "",
    "Wed, 21 Oct 2015 07:28:00 GMT",  # an HTTP date in the past
    "Fri, 31 Dec 9999 23:59:59 GMT",  # ... and far in the future
    "Wed, 21 Oct 2015 07:28:00",  # a date without a zone
    "Mon, 99 Foo 2015 99:99:99 GMT",
)


class Target(NamedTuple):
    """What a hostile rule may refer to: the blob and where it is served."""

    name: str  # the blob's file name on both servers
    size: int
    port: int  # the server under test
    other_port: int  # a second server with the same files (another origin: "localhost")
    sandbox: str  # a directory the download must never write into directly


def hostile_filenames(sandbox: str) -> list[str]:
    """Content-Disposition values a server should never get to write outside the cwd with."""
    return [
        'attachment; filename="../../escaped"',
        f'attachment; filename="{sandbox}/escaped"',
        "attachment; filename*=idna''x",
        "attachment; filename*=utf-8''%2e%2e%2fescaped",
        "attachment; filename*=bogus''%ff%fe",
        "attachment; filename*=utf-8''%00",
        "attachment; filename*=utf-8''" + "%C3%A9" * 2000,
        'attachment; filename="' + "A" * 10_000 + '"',
        'attachment; filename=".."',
        'attachment; filename="."',
        'attachment; filename=""',
        'attachment; filename="   "',
        'attachment; filename="a\\\\..\\\\b"',
        'attachment; filename="x.blobdl-tmp"',
        'attachment; filename="x.blobdl-lock"',
        "attachment; filename",
        "attachment; filename=" + ";" * 50,
        "inline",
        "",
    ]


# Header values a hostile server may send on an otherwise normal response.
HOSTILE_HEADER_VALUES: dict[str, list[str]] = {
    "Content-Range": [
        f"bytes 0-0/{2**62}",
        "bytes 0-0/1" + "0" * 5000,  # 10**5000
        f"bytes 0-{2**70}/{2**71}",
        "bytes 0-0/-1",
        "bytes */*",
        "bytes 0-0/*",
        "bytes 0-0/0",
        "bytes=0-0/10",
        "garbage",
        "",
    ],
    "ETag": ['"changed"', 'W/"weak"', "", "unquoted"],
    "Last-Modified": ["garbage", "Thu, 01 Jan 1970 00:00:00 GMT"],
    "Content-Encoding": ["gzip", "br", "identity, gzip", "GZIP"],
    # On a body that is not chunk-encoded: each must be refused or decoded, never written raw.
    "Transfer-Encoding": ["chunked", "chunked ", "gzip", "identity", "gzip, chunked", ""],
    "Accept-Ranges": ["none", "bytes, none", ""],
}


def _odd_headers(t: Target) -> st.SearchStrategy[dict[str, object]]:
    values: dict[str, list[str]] = {
        "Content-Disposition": hostile_filenames(t.sandbox),
        **HOSTILE_HEADER_VALUES,
    }
    one_set = st.sampled_from(sorted(values)).flatmap(
        lambda name: st.sampled_from(values[name]).map(lambda v: {name: v})
    )
    drop = st.lists(
        st.sampled_from(["Content-Range", "ETag", "Last-Modified", "Accept-Ranges"]),
        min_size=1,
        max_size=2,
        unique=True,
    )
    return st.one_of(
        one_set.map(lambda h: {"action": "headers", "set": h}),
        drop.map(lambda d: {"action": "headers", "drop": d}),
    )


def _length_lies(t: Target) -> st.SearchStrategy[dict[str, object]]:
    """Content-Length lies: undetectable when the size is unknown, so only with a digest."""
    lies = ["garbage", "-1", str(2**63), str(10**30), "1, 2", "", "0", str(max(t.size - 1, 0))]
    return st.one_of(
        st.sampled_from(lies).map(lambda v: {"action": "headers", "set": {"Content-Length": v}}),
        st.just({"action": "headers", "drop": ["Content-Length"]}),
    )


def _redirects(t: Target, endless_hold: float) -> st.SearchStrategy[dict[str, object]]:
    here, there = f"127.0.0.1:{t.port}", f"localhost:{t.other_port}"
    locations = [
        f"http://{there}/files/{t.name}",  # another origin
        f"/redirect/2/{t.name}",  # a chain
        f"../files/{t.name}",  # relative
        t.name,
        f"http://{here}/redirect-abs/3/{t.name}",
        f"http://{there}\\@{here}/files/{t.name}",  # parsers disagree on the host
        f"http://other:1\\@{here}/files/{t.name}",
        f"http://user:pass@{here}/files/{t.name}",
        "http://[::1",
        "ht tp://x",
        "//",
        "http://",
        ":::",
        "http://127.0.0.1:99999/x",
        "http://127.0.0.1:0/x",
        "ftp://127.0.0.1/x",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "\x7f",
        "",
        "/files/" + "a" * 10_000,
    ]
    return st.fixed_dictionaries(
        {
            "action": st.just("redirect"),
            "location": st.sampled_from(locations),
            "status": st.sampled_from([301, 302, 303, 307, 308]),
            "endless": st.booleans(),
            "hold": st.just(endless_hold),
        }
    )


#: Transfer-Encoding values a server may frame a (really chunk-encoded, or raw) body with.
TRANSFER_CODINGS = ("chunked ", "Chunked", ",chunked", "gzip, chunked", "chunked, chunked",
                    "identity", "gzip", "x-foo", "")  # fmt: skip
#: Interim responses a server may send before its answer (101 is final, and unasked).
INTERIM_RUNS = ((103,), (100, 103), (102, 199), (101,), (103,) * 150)


def _framings() -> st.SearchStrategy[dict[str, object]]:
    """How a body is framed (issue #20): a Transfer-Encoding spelled any way, over a
    chunk-encoded body or a raw one, with or without a Content-Length beside it; interim
    responses before the answer."""
    coded = st.fixed_dictionaries(
        {
            "action": st.just("transfer_encoding"),
            "value": st.sampled_from(TRANSFER_CODINGS),
            "chunked": st.booleans(),
            "length": st.booleans(),
        }
    )
    interim = st.sampled_from(INTERIM_RUNS).map(
        lambda run: {"action": "interim", "statuses": list(run)}
    )
    return coded | interim


def hostile_fault(
    t: Target, hold: float, digest: bool, endless_hold: float = 30.0
) -> st.SearchStrategy[dict[str, object]]:
    """One fault for one request; ``hold`` outlasts the client's stall timeout, and an
    endless redirect body lasts ``endless_hold`` (longer than a run may take: a hang)."""
    body = st.integers(0, t.size + 512)
    retry_after = st.none() | st.sampled_from(RETRY_AFTERS)
    faults = [
        st.builds(
            lambda a, n: {"action": a, "bytes": n},
            st.sampled_from(["reset_after", "close_after"]),
            body,
        ),
        body.map(lambda n: {"action": "stall_after", "bytes": n, "hold": hold}),
        st.just({"action": "no_response", "hold": hold}),
        st.sampled_from(["full_200", "ignore_range", "no_length"]).map(lambda a: {"action": a}),
        st.integers(-t.size - 1, t.size + 1)
        .filter(bool)
        .map(lambda by: {"action": "wrong_content_range", "by": by}),
        st.builds(
            lambda code, ra: {
                "action": "status",
                "status": code,
                "headers": {} if ra is None else {"Retry-After": ra},
            },
            st.sampled_from(HOSTILE_STATUSES),
            retry_after,
        ),
        st.sampled_from(['"other"', 'W/"weak"', "bare"]).map(
            lambda v: {"action": "etag", "value": v}
        ),
        _odd_headers(t),
        _redirects(t, endless_hold),
        _framings(),
    ]
    if digest:  # bytes that lie behind a correct header: only a digest can tell
        faults.append(
            st.integers(-t.size, t.size)
            .filter(bool)
            .map(lambda by: {"action": "shift_range", "by": by})
        )
        faults.append(_length_lies(t))
    return st.one_of(faults)


def hostile_rules(
    t: Target, hold: float, digest: bool, endless_hold: float = 30.0
) -> st.SearchStrategy[list[dict[str, object]]]:
    """A script of faults, one request each, with some normal requests between them; the
    rules match every path (redirect hops too) in the order the requests arrive."""
    # Mostly back to back: the probe and the first parts are where a lie does most harm.
    step = st.tuples(st.sampled_from([0, 0, 0, 1, 2]), hostile_fault(t, hold, digest, endless_hold))
    return st.lists(step, max_size=5).map(
        lambda steps: [{"path": "/*", "skip": gap, "times": 1, **f} for gap, f in steps]
    )


# --- the hostile registry: a scripted registry per example (integration/test_pull_hostile.py)

REGISTRY_REPO, REGISTRY_TAG = "library/hostile", "v1"
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
LAYER_TYPE = "application/vnd.ollama.image.model"
BLOB_SIZES = (0, 1, 3_000, 40_000)
HUGE = 5 << 20  # more than any document blobdl reads (4 MiB)


class RegistryPorts(NamedTuple):
    """The scripted registry's origins (see ``faultserver.hostile_registry``)."""

    registry: int
    storage: int
    auth: int


def _entry(data: bytes, media_type: str = LAYER_TYPE) -> dict[str, object]:
    return {"mediaType": media_type, "digest": "sha256:" + sha256(data).hexdigest(),
            "size": len(data)}  # fmt: skip


@st.composite
def registry_models(draw: st.DrawFn) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Blobs (digest -> bytes) and the manifest naming them: a config and 1-3 layers."""
    sizes = draw(st.lists(st.sampled_from(BLOB_SIZES), min_size=1, max_size=3))
    seed = draw(st.integers(0, 2**16))
    layers = [random.Random(seed * 7 + i).randbytes(size) for i, size in enumerate(sizes)]
    config = json.dumps({"model_format": "gguf", "seed": seed}).encode()
    doc = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
           "config": _entry(config, "application/vnd.docker.container.image.v1+json"),
           "layers": [_entry(data) for data in layers]}  # fmt: skip
    blobs = {str(e["digest"]): data for e, data in zip(
        [doc["config"], *doc["layers"]], [config, *layers], strict=True)}  # fmt: skip
    return blobs, doc


def _with(doc: dict[str, Any], path: tuple[object, ...], value: object) -> str:
    """``doc`` as JSON with the field at ``path`` (keys and list indexes) set to ``value``."""
    copy = json.loads(json.dumps(doc))
    *parents, last = path
    node = copy
    for key in parents:
        node = node[key]
    node[last] = value
    return json.dumps(copy)


def manifest_variants(doc: dict[str, Any]) -> list[bytes]:
    """Every way of getting ``doc``'s manifest wrong we try (and two that are still right:
    an OCI media type, an unknown field)."""
    good = json.dumps(doc).encode()
    digest = doc["layers"][0]["digest"]
    wrong_types = [(("layers",), 5), (("layers",), [5]), (("layers",), "x"), (("config",), "x"),
                   (("config",), None), (("layers", 0, "digest"), 5),
                   (("layers", 0, "digest"), None), (("layers", 0, "digest"), "sha256:xyz"),
                   (("layers", 0, "digest"), digest + "\n"), (("layers", 0, "digest"),
                   digest.upper()), (("layers", 0, "size"), "10"), (("layers", 0, "size"), -1),
                   (("layers", 0, "size"), 1.5), (("layers", 0, "size"), 2**64),
                   (("layers", 0, "size"), True), (("layers", 0, "size"), None),
                   (("layers", 0, "mediaType"), 5), (("layers", 0, "from"), 7),
                   (("config", "size"), [1]), (("mediaType",), 5), (("schemaVersion",), "2"),
                   (("schemaVersion",), 2.0), (("schemaVersion",), 1),
                   (("layers", 0, "size"), doc["layers"][0]["size"] + 1),
                   (("mediaType",), "application/vnd.oci.image.index.v1+json"),
                   (("mediaType",), "application/vnd.oci.image.manifest.v1+json"),
                   (("annotations",), {"a": [[[[{"b": None}]]]]})]  # fmt: skip
    raws = [
        b"[" * 100_000,
        b'{"a":' * 50_000,
        b"garbage",
        b"",
        b"null",
        b"[]",
        b'"a string"',
        b'{"schemaVersion": NaN}',
        good + b" trailing",
        good[:-1] + b', "LAYERS": 5}',  # Go matches keys without regard to case
        b'{"layers": 5, ' + good[1:],  # the same key twice: Go reads both
        good[:-1] + ', "ſchemaVersion": "2"}'.encode(),  # Go folds the long s to "s"
        good.replace(b'"config"', '"conﬁg"'.encode()),  # a ligature: no field of Go's
        good.replace(b'"digest"', b'"dige\\ufb06"'),  # "digeﬆ", escaped: no field either
        good.replace(b"{", b'{"x": "\xff", ', 1),  # not UTF-8
        b"\xef\xbb\xbf" + good,  # a UTF-8 byte order mark
        good.decode().encode("utf-16"),
        b'{"schemaVersion": 2, "config": {"digest": "sha256:' + b"0" * 64 + b'", "size": 1e400}}',
        b'{"schemaVersion": 2, "size": ' + b"9" * 5000 + b"}",
    ]
    return [_with(doc, *change).encode() for change in wrong_types] + raws


def hostile_manifests(doc: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """Manifest bytes: the right ones (half the time), or one of ``manifest_variants``."""
    good = json.dumps(doc).encode()
    return st.one_of(st.just(good), st.sampled_from(manifest_variants(doc)))


def _locations(p: RegistryPorts, path: str) -> list[str]:
    """Where a hostile redirect may point: other origins, ambiguous and broken URLs."""
    here = f"127.0.0.1:{p.registry}"
    return [
        f"http://127.0.0.1:{p.storage}{path}",  # another origin: no credential may follow
        f"http://localhost:{p.storage}\\@{here}{path}",  # parsers disagree on the host
        f"http://other:1\\@{here}{path}",
        f"http://user:pass@{here}{path}",
        path,  # relative, the same origin: the next request is answered normally
        f"http://127.0.0.1:99999{path}",
        f"http://127.0.0.1:0{path}",
        "http://[::1",
        "http://[::1]x/",
        f"http://[::ffff:127.0.0.1]:{p.registry}{path}",
        "http://[fe80::1%25lo]/x",
        "http://[:::1]/x",
        "ftp://127.0.0.1/x",
        "file:///etc/passwd",
        "ht tp://x",
        "\x7f",
        "",
        "/" + "a" * 10_000,
    ]


def _realms(p: RegistryPorts) -> list[str]:
    auth = f"127.0.0.1:{p.auth}"
    return [
        'Bearer realm="http://[::1"',
        'Bearer realm="http://[::1]x/token"',
        'Bearer realm="http://127.0.0.1:99999/token"',
        f'Bearer realm="http://localhost:{p.storage}\\@{auth}/token"',
        f'Bearer realm="http://{auth}/token\r\nX-Injected: 1"',
        'Bearer realm="ftp://127.0.0.1/token"',
        'Bearer realm="/token"',
        'Bearer realm=""',
        "Bearer",
        "Negotiate abc",
        'Basic realm="x"',
        "",
    ]


_TOKEN_BODIES = [
    "[" * 100_000,
    '{"token": ' * 50_000,
    '{"token": 5}',
    '{"token": ["t"]}',
    '{"token": "a\\r\\nX-Injected: 1"}',
    '{"token": "\\u2603"}',
    '{"token": "caf\\u00e9"}',
    '{"token": "a\\u0000b"}',
    '{"token": ""}',
    '{"access_token": "t", "token": 5}',
    "{}",
    "null",
    "not json",
    '{"token": "' + "t" * 200_000 + '"}',
]


def _rule(role: str, match: str, times: int | None, **answer: object) -> dict[str, object]:
    return {"role": role, "match": match, "skip": 0, "times": times, **answer}


WHERE = (("registry", "manifests"), ("registry", "blobs"), ("storage", ""), ("auth", ""))
REGISTRY_STATUSES = (401, 403, 404, 408, 425, 429, 500, 503)


def _fixed_faults(good_manifest: str) -> list[dict[str, object]]:
    return [
        _rule("registry", "manifests", 1, status=200, repeat=[" ", HUGE]),
        _rule("auth", "", 1, status=200, repeat=["x", HUGE]),
        *(_rule("registry", "manifests", None, status=200, body=good_manifest, headers=lying)
          for lying in ({"Docker-Content-Digest": "sha256:" + "0" * 64},
                        {"Content-Encoding": "gzip"})),
        _rule("registry", "blobs", None, status=200, body="not the blob"),
        _rule("storage", "", None, status=200, body="not the blob either"),
        _rule("registry", "blobs", 1, status=307, headers={}),
    ]  # fmt: skip


def _challenge(value: str, times: int | None) -> dict[str, object]:
    return _rule("registry", "manifests", times, status=401, headers={"WWW-Authenticate": value})


def _token_answer(body: str, times: int | None) -> dict[str, object]:
    json_type = {"Content-Type": "application/json"}
    return _rule("auth", "", times, status=200, body=body, headers=json_type)


def fault_catalogue(p: RegistryPorts, good_manifest: str) -> list[dict[str, object]]:
    """Every single fault ``registry_faults`` draws from, once each (for a sweep)."""
    path = f"/v2/{REGISTRY_REPO}/manifests/{REGISTRY_TAG}"
    return [
        *(_rule(*w, None, status=s, headers={"Retry-After": "0"})
          for w in WHERE for s in REGISTRY_STATUSES),
        *(_rule(*w, 1, status=307, headers={"Location": loc})
          for w in WHERE for loc in _locations(p, path)),
        *(_challenge(value, None) for value in _realms(p)),
        *(_token_answer(body, None) for body in _TOKEN_BODIES),
        *_fixed_faults(good_manifest),
    ]  # fmt: skip


def registry_faults(p: RegistryPorts, good_manifest: str) -> st.SearchStrategy[dict[str, object]]:
    """One scripted answer to one kind of request (or to every one, ``times`` None)."""
    manifest_path = f"/v2/{REGISTRY_REPO}/manifests/{REGISTRY_TAG}"
    times = st.sampled_from([1, 1, None])
    retry_after = st.sampled_from(["0", "1", "-1", "soon", "99999999999999999999"])
    where = st.sampled_from(WHERE)
    return st.one_of(
        st.builds(
            lambda w, s, t, ra: _rule(*w, t, status=s, headers={"Retry-After": ra}),
            where,
            st.sampled_from(REGISTRY_STATUSES),
            times,
            retry_after,
        ),
        st.builds(
            lambda w, loc, status, t: _rule(*w, t, status=status, headers={"Location": loc}),
            where,
            st.sampled_from(_locations(p, manifest_path)),
            st.sampled_from([301, 302, 307, 308]),
            times,
        ),
        st.builds(_challenge, st.sampled_from(_realms(p)), times),
        st.builds(_token_answer, st.sampled_from(_TOKEN_BODIES), times),
        st.sampled_from(_fixed_faults(good_manifest)),
    )


# --- Hugging Face repositories: paths and the patterns that choose them (unit/test_hf_names) --

_PATH_CHARS = "ab.*?[]!\\-_ "  # glob characters and "\" (a plain character in a repo path)
_PATTERN_CHARS = "ab/*?[]!\\."


@st.composite
def repo_paths(draw: st.DrawFn) -> str:
    """A path a listing may hold: ``/``-separated segments, none empty, ``.`` or ``..``."""
    segment = st.text(_PATH_CHARS, min_size=1, max_size=4).filter(lambda s: s not in (".", ".."))
    return "/".join(draw(st.lists(segment, min_size=1, max_size=3)))


patterns = st.lists(st.text(_PATTERN_CHARS, max_size=6), max_size=3)


# --- manifests for -i -------------------------------------------------------------------------

_MANIFEST_WORDS = (
    "http://h/a", "https://h:99999/a", "http://[::1]/a", "http://[fe80::1%25lo]/a",
    "http://u:p@h/a", "ftp://h/a", "http://h:0/a", "http:///a", "//h/a", "http://h:+80/a",
    "http://h:\u0668\u0660/a", "http://h/a b", "http://" + "a" * 300 + "/x", "x", "../x",
    "/etc/x", "a/", "x/.", "a.blobdl-tmp", "sha256:" + "A" * 64, "SHA256:" + "a" * 64,
    "sha256:" + "a" * 63, "sha512:" + "a" * 128, "\ufeff", "\t", "\x0b", "\x1c", "\x85",
    "\u2028", "\udcff", "\x00", "#",
)  # fmt: skip
_JSON_VALUES = st.one_of(
    st.sampled_from(_MANIFEST_WORDS), st.integers(), st.none(), st.booleans(),
    st.floats(allow_nan=False),
    st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=5), st.integers()), max_size=3),
)  # fmt: skip
_JSON_ITEMS = st.dictionaries(
    st.sampled_from(["url", "path", "digest", "headers", "size", "pth"]), _JSON_VALUES
).map(json.dumps)


@st.composite
def hostile_manifest_texts(draw: st.DrawFn) -> str:
    """A manifest's text: lines of odd words (schemes, ports, IPv6, userinfo, digests in
    other spellings, paths that lead out, control and separator characters), JSON items
    with fields of every type, any text at all; joined by any line break Python splits on."""
    words = st.lists(st.sampled_from(_MANIFEST_WORDS), max_size=4).map(" ".join)
    lines = draw(st.lists(st.one_of(words, _JSON_ITEMS, st.text(max_size=30)), max_size=5))
    return str(draw(st.sampled_from(["\n", "\r\n", "\r", "\x85", "\u2028"]))).join(lines)


# --- framing: how a body is delimited, right or wrong (integration/test_hostile_framing.py) --

#: ``Transfer-Encoding`` values that mean chunked (RFC 9110 5.6.1: a list, any case).
CHUNKED_SPELLINGS = ("chunked", "Chunked", "CHUNKED", "chunked ", ",chunked")
#: Chunk-size lines that are not the grammar's (RFC 9112 7.1: ``1*HEXDIG [ext] CRLF``), most
#: of them the chunk's own size (``n``) spelled as Python's ``int(line, 16)`` reads it.
BAD_SIZE_LINES = ("-1\r\n", "-{n:x}\r\n", "+{n:x}\r\n", "0x{n:x}\r\n", "0_{n:x}\r\n",
                  " {n:x}\r\n", "{n:x}g\r\n", ";ext\r\n", "\r\n", "1" + "0" * 16 + "\r\n",
                  "f" * 70_000 + "\r\n", "{n:x}\r")  # fmt: skip
#: How far a stated size (a chunk's, a Content-Length, a Content-Range) is off.
OFF_BY = (-3, -2, -1, 1, 2, 3, 100)


class Framing(NamedTuple):
    """A ``framing`` spec (faultserver/framing.py) and what a client must make of it."""

    spec: dict[str, object]
    readable: bool  # the grammar's, plainly: a client must read it (else it may refuse)


@st.composite
def chunk_lines(draw: st.DrawFn) -> str:
    """A chunk-size line as the grammar allows it: leading zeros, either case, white space
    and extensions before the line end, a bare LF (RFC 9112 2.2 lets a recipient take it)."""
    zeros = "0" * draw(st.integers(0, 3))
    digits = draw(st.sampled_from(["{n:x}", "{n:X}"]))
    space = draw(st.sampled_from(["", " ", " \t"]))
    ext = draw(st.sampled_from(["", ";a=b", ';a="x;y"', ";a;b=c"]))
    return zeros + digits + space + ext + draw(st.sampled_from(["\r\n", "\n"]))


@st.composite
def chunked_framings(draw: st.DrawFn, size: int) -> Framing:
    """A chunked body split anywhere, its lines in any form the grammar allows; then, or
    not, one thing the grammar does not (a size line, a size off, a chunk's end, no last
    chunk, trailers past a head's bound, a Content-Length beside it, bytes after it)."""
    spec: dict[str, object] = {
        "body": "chunked",
        "te": draw(st.sampled_from(CHUNKED_SPELLINGS)),
        "cuts": draw(st.lists(st.integers(1, max(size, 1)), max_size=4)),
        "line": draw(chunk_lines()),
        "trailers": draw(st.sampled_from([0, 0, 1, 3])),
    }
    fault = draw(st.sampled_from(["none", "none", "bad", "bad", "bad", "off", "off",
                                  "data_end", "last", "trailers", "length", "junk"]))  # fmt: skip
    chunk = st.integers(0, 4)
    if fault == "bad":
        spec["bad"] = {"chunk": draw(chunk), "line": draw(st.sampled_from(BAD_SIZE_LINES))}
    elif fault == "off":
        spec["off"] = {"chunk": draw(chunk), "by": draw(st.sampled_from(OFF_BY))}
    elif fault == "data_end":
        spec["data_end"] = draw(st.sampled_from(["\n", "", "\r", "xy"]))
    elif fault == "last":
        spec["last"] = False
    elif fault == "trailers":
        spec["trailers"] = draw(st.sampled_from([101, 150]))
    elif fault == "length":  # RFC 9112 6.1: chunked wins, or the message is refused
        spec["length"] = draw(st.sampled_from(["right", "short", "long", "list_other"]))
    elif fault == "junk":
        spec["junk"] = draw(st.sampled_from(["x", "HTTP/1.1 200 OK\r\n\r\n", "0\r\n\r\n"]))
    return Framing(spec, fault == "none")


def length_framings(whole: bool, digest: bool) -> st.SearchStrategy[Framing]:
    """A body delimited by its Content-Length (right, off, doubled, a list) or by the
    connection's close. A 200's length that is short but not refused is only a lie a digest
    can tell (nothing else states the size), so it comes with one."""
    right = st.sampled_from([{}, {"body": "close"}]).map(lambda s: Framing(s, True))
    lies = ["long", "twice", "list", "list_other"] + (["short"] if digest or not whole else [])
    lying = st.builds(
        lambda how, by: Framing({"length": how, "by": by}, False),
        st.sampled_from(lies),
        st.sampled_from([n for n in OFF_BY if n > 0]),
    )
    return right | lying


def range_framings(digest: bool) -> st.SearchStrategy[Framing]:
    """A 206's Content-Range moved (the bytes not) or of another total; another total told
    alike on every answer is a smaller or larger blob, so it comes with a digest."""
    kinds = ["shifted", "total"] if digest else ["shifted"]
    return st.builds(
        lambda how, by: Framing({"range": how, "by": by}, False),
        st.sampled_from(kinds),
        st.sampled_from(OFF_BY),
    )


def framings(size: int, whole: bool, digest: bool) -> st.SearchStrategy[Framing]:
    """One answer's framing, for a blob of ``size`` bytes; ``whole``: every answer a 200
    of the whole blob (a server without ranges)."""
    choices = [chunked_framings(size), length_framings(whole, digest)]
    if not whole:
        choices.append(range_framings(digest))
    return st.one_of(choices)


def framing_catalogue() -> dict[str, dict[str, object]]:
    """Every corruption ``framings`` draws from, once each, on a chunked body of three
    chunks (or a plain one), by name: for a sweep that needs no luck."""
    chunked = {"body": "chunked", "cuts": [100, 600]}
    named: dict[str, dict[str, object]] = {}
    for line in BAD_SIZE_LINES:
        named[f"size line {line[:12]!r}"] = {**chunked, "bad": {"chunk": 1, "line": line}}
    for by in OFF_BY:
        named[f"chunk size off by {by}"] = {**chunked, "off": {"chunk": 1, "by": by}}
        named[f"last chunk size off by {by}"] = {**chunked, "off": {"chunk": 2, "by": by}}
    for end in ("\n", "", "\r", "xy"):
        named[f"chunk data ended by {end!r}"] = {**chunked, "data_end": end}
    named["no last chunk"] = {**chunked, "last": False}
    named["101 trailers"] = {**chunked, "trailers": 101}
    for how in ("short", "long", "twice", "list", "list_other"):
        named[f"Content-Length {how}"] = {"length": how}
        named[f"chunked and Content-Length {how}"] = {**chunked, "length": how}
    return named
