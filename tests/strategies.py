"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

from typing import NamedTuple

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
