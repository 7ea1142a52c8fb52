"""Secrets stay with the origin they were given for, and never reach output or disk.

Two real servers on loopback (two ports of one host are two origins), a TLS one for the
https -> http downgrade; the servers record the headers of every request they saw.
"""

from __future__ import annotations

import base64
import json
import pickle
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import blobdl
from blobdl import Downloader, Item, Settings
from blobdl.errors import (
    BadResponse,
    BlobdlError,
    ConnectionFailed,
    HTTPStatusError,
    TooManyRedirects,
    UsageError,
)
from faultserver.serverctl import ServerHandle, make_blob, start_server
from tests.conftest import PART, Blob, fast_settings, run_cli
from tests.integration.conftest import PKI

Make = Callable[..., Blob]
PASSWORD = "hunter2pw"
SECRETS = {
    "Authorization": "Bearer s3cret-token",
    "Cookie": "session=s3cret-cookie",
    "X-Api-Key": "s3cret-key",
    "Private-Token": "s3cret-private",
}
HARMLESS = {"Accept": "application/octet-stream", "Accept-Language": "en"}


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """A second origin: the same host, another port."""
    handle = start_server(tmp_path_factory.mktemp("served-other"))
    yield handle
    handle.stop()


@pytest.fixture
def other_blob(other: ServerHandle) -> Blob:
    other.reset()
    size = 2 * PART + 5
    digest = make_blob(other.root, "other.bin", size, seed=3)
    return Blob("other.bin", size, digest, other.url("other.bin"))


def _redirect(server: ServerHandle, path: str, location: str) -> None:
    rule = {"path": path, "action": "status", "status": 302, "headers": {"Location": location}}
    server.set_faults({**rule, "times": None})


def _seen(handle: ServerHandle) -> str:
    """Every header value the server received, lower-cased names included."""
    return json.dumps(handle.stats()["headers"]).lower()


def _header_args(headers: dict[str, str]) -> list[str]:
    return [arg for k, v in headers.items() for arg in ("-H", f"{k}: {v}")]


# --- item 5: cross-origin redirects ------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "same"),
    [
        ("http://h/a", "http://h:80/b", True),
        ("https://h/a", "https://H:443/b", True),
        ("http://h/a", "http://h:8080/a", False),
        ("https://h/a", "http://h/a", False),
        ("http://h:443/a", "https://h/a", False),
        ("http://h/a", "http://g/a", False),
    ],
)
def test_origin_is_scheme_host_and_port(old: str, new: str, same: bool) -> None:
    from blobdl.http._urls import same_origin

    assert same_origin(old, new) is same


def test_redirect_to_another_port_carries_no_secret_header(
    server: ServerHandle, other: ServerHandle, other_blob: Blob, tmp_path: Path
) -> None:
    _redirect(server, "/files/start.bin", other_blob.url)
    headers = {**SECRETS, **HARMLESS}
    dest = tmp_path / "out.bin"
    settings = fast_settings(headers=tuple(headers.items()))
    result = Downloader(settings).download(server.url("start.bin"), dest)
    assert result.size == other_blob.size
    first = _seen(server)
    assert all(v.lower() in first for v in SECRETS.values())  # the origin asked got them
    seen = _seen(other)
    for value in SECRETS.values():
        assert value.lower() not in seen
    assert "application/octet-stream" in seen  # harmless headers still follow


def test_redirect_from_https_to_http_carries_no_secret_header(
    tls_server: ServerHandle,
    pki: PKI,
    other: ServerHandle,
    other_blob: Blob,
    tmp_path: Path,
) -> None:
    tls_server.reset()
    _redirect(tls_server, "/files/start.bin", other_blob.url)
    settings = fast_settings(
        headers=tuple(SECRETS.items()),
        ca_bundle=pki.ca_pem,
    )
    Downloader(settings).download(tls_server.url("start.bin"), tmp_path / "out.bin")
    assert "s3cret-token" in _seen(tls_server)
    seen = _seen(other)
    assert all(v.lower() not in seen for v in SECRETS.values())


def test_location_read_differently_by_the_two_parsers_is_refused(
    server: ServerHandle, other: ServerHandle, other_blob: Blob, tmp_path: Path
) -> None:
    # urllib.parse: user "127.0.0.1", host 127.0.0.1:<server>; urllib3: host 127.0.0.1:<other>.
    tricky = f"http://127.0.0.1:{other.port}\\@127.0.0.1:{server.port}/files/{other_blob.name}"
    _redirect(server, "/files/start.bin", tricky)
    settings = fast_settings(headers=tuple(SECRETS.items()), retries=0)
    with pytest.raises(BadResponse, match="parsers"):
        Downloader(settings).download(server.url("start.bin"), tmp_path / "out.bin")
    assert other.stats()["requests"] == 0
    assert server.stats()["requests"] == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{other}\\@127.0.0.1:{port}/files/x",
        "http://a:b\\@127.0.0.1:{port}/files/x",
        "http://127.0.0.1:{port}\\\\@127.0.0.1:{other}/files/x",
    ],
)
def test_user_url_read_differently_by_the_two_parsers_is_refused(
    server: ServerHandle, other: ServerHandle, url: str, tmp_path: Path
) -> None:
    url = url.format(port=server.port, other=other.port)
    other.reset()
    with pytest.raises(UsageError):
        Downloader(fast_settings(headers=tuple(SECRETS.items()))).download(
            url, tmp_path / "out.bin"
        )
    assert server.stats()["requests"] == 0
    assert other.stats()["requests"] == 0


# --- item 6: user:pass@ in a URL ---------------------------------------------------------


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _with_password(url: str) -> str:
    return url.replace("http://", f"http://alice:{PASSWORD}@", 1)


def test_userinfo_becomes_basic_auth_for_the_first_origin_only(
    server: ServerHandle, other: ServerHandle, other_blob: Blob, tmp_path: Path
) -> None:
    _redirect(server, "/files/start.bin", other_blob.url)
    events: list[object] = []
    result = Downloader(fast_settings()).download(
        _with_password(server.url("start.bin")), tmp_path / "out.bin", on_event=events.append
    )
    assert _basic("alice", PASSWORD).lower() in _seen(server)
    assert "basic" not in _seen(other)
    assert PASSWORD not in repr(result)
    assert all(PASSWORD not in repr(e) for e in events)


def test_userinfo_is_sent_on_the_same_origin(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(3 * PART)
    Downloader(fast_settings()).download(_with_password(blob.url), tmp_path / "out.bin")
    headers = server.stats()["headers"]
    assert headers and all(h.get("Authorization") == _basic("alice", PASSWORD) for h in headers)


def test_password_is_in_no_error_event_or_output(server: ServerHandle, tmp_path: Path) -> None:
    url = _with_password(server.route("/status/404"))
    with pytest.raises(BlobdlError) as info:
        Downloader(fast_settings()).download(url, tmp_path / "out.bin")
    assert PASSWORD not in str(info.value) and PASSWORD not in repr(info.value.args)
    done = run_cli(url, "-o", str(tmp_path / "o.bin"), "--json")
    assert done.returncode == 3
    assert PASSWORD not in done.stdout + done.stderr
    bad = run_cli("ftp://alice:" + PASSWORD + "@h/x", "--json")
    assert bad.returncode == 2
    assert PASSWORD not in bad.stdout + bad.stderr


def test_password_is_not_in_the_state_file(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(4 * PART, seed=11)
    # A clean close after some bytes: they land (a reset may discard them in the socket), so
    # the partial is worth keeping and its state is written.
    server.set_faults({"path": f"/files/{blob.name}", "action": "close_after", "bytes": 1000,
                       "skip": 1, "times": None})  # fmt: skip
    dest = tmp_path / "out.bin"
    done = run_cli(_with_password(blob.url), "-o", str(dest), "--json", "--retries", "0",
                   "--min-part-size", str(PART), "--max-part-size", str(PART))  # fmt: skip
    assert done.returncode == 3
    kept = [p for p in tmp_path.iterdir() if p.name != "out.bin"]
    assert kept, "a resumable failure keeps its state"
    for path in kept:
        assert PASSWORD.encode() not in path.read_bytes()
    assert PASSWORD not in done.stdout + done.stderr


def test_batch_sends_userinfo_as_basic_auth_and_never_shows_it(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(2 * PART, seed=12)
    manifest = tmp_path / "list.txt"
    missing = _with_password(server.route("/status/404"))
    manifest.write_text(f"{_with_password(blob.url)} {tmp_path / 'a.bin'}\n{missing} "
                        f"{tmp_path / 'b.bin'}\n")  # fmt: skip
    done = run_cli("-i", str(manifest), "--json")
    assert done.returncode == 3
    assert PASSWORD not in done.stdout + done.stderr
    assert _basic("alice", PASSWORD).lower() in _seen(server)
    plain = run_cli("-i", str(manifest))
    assert PASSWORD not in plain.stdout + plain.stderr


def test_proxy_password_is_not_in_the_error() -> None:
    with pytest.raises(UsageError) as info:
        Settings(proxy=f"ftp://bob:{PASSWORD}@proxy:3128")
    assert PASSWORD not in str(info.value)
    done = run_cli("--proxy", f"socks5://bob:{PASSWORD}@proxy:1", "http://127.0.0.1:9/x")
    assert done.returncode == 2
    assert PASSWORD not in done.stderr


# A URL that is not quite one: pasted with a leading space or newline (a shell's "$URL"
# built from a copied line), scheme-relative as a web page writes it, or its colon lost.
MISSHAPEN = {
    "a leading space": f" https://alice:{PASSWORD}@127.0.0.1:9/x",
    "a leading newline": f"\nhttps://alice:{PASSWORD}@127.0.0.1:9/x",
    "no scheme": f"//alice:{PASSWORD}@127.0.0.1:9/x",
    "no colon": f"https//alice:{PASSWORD}@127.0.0.1:9/x",
    "a leading space, a slash in it": f" http://alice:{PASSWORD}/x@127.0.0.1:9/x",
}


@pytest.mark.parametrize("url", MISSHAPEN.values(), ids=MISSHAPEN.keys())
def test_a_misshapen_urls_password_is_never_shown_as_it_is_refused(
    url: str, tmp_path: Path
) -> None:
    """A URL refused as no URL (spaces, no scheme) was shown whole in the refusal: the
    redaction masked a ``user:password@`` only right after a scheme at its very start."""
    with pytest.raises(UsageError) as info:
        blobdl.download(url, tmp_path / "out.bin")
    _assert_no_secret_in(info.value)
    [result] = blobdl.download_many([Item(url, str(tmp_path / "a.bin"))])
    assert isinstance(result.error, UsageError)
    _assert_no_secret_in(result.error)
    try:  # as a proxy: refused, or kept and shown in the settings' repr (jobs log it)
        assert PASSWORD not in repr(Settings(proxy=url))
    except UsageError as refused:
        _assert_no_secret_in(refused)


def test_credentials_in_a_location_are_never_kept(
    server: ServerHandle, other: ServerHandle, other_blob: Blob, tmp_path: Path
) -> None:
    location = other_blob.url.replace("http://", f"http://eve:{PASSWORD}@")
    _redirect(server, "/files/start.bin", location)
    result = Downloader(fast_settings()).download(server.url("start.bin"), tmp_path / "o.bin")
    assert PASSWORD not in repr(result)
    assert "basic" not in _seen(other)


# --- credentials in query strings (presigned URLs, tokens) -------------------------------

SIGNED = "X-Amz-Credential=CREDSECRET&X-Amz-Signature=SIGSECRET&part=7"


def test_a_presigned_url_shows_no_signature_in_errors_events_or_state(
    server: ServerHandle, other: ServerHandle, other_blob: Blob, tmp_path: Path
) -> None:
    """Storage a server redirects to is often a presigned URL: its signature is a
    credential. It is used, never printed or stored."""
    _redirect(server, "/files/start.bin", f"{other_blob.url}?{SIGNED}")
    # A clean close after some bytes on every part: the bytes land, the retries run out.
    other.set_faults({"path": "/files/other.bin", "action": "close_after", "bytes": 1000,
                      "skip": 1, "times": None})  # fmt: skip
    dest = tmp_path / "out.bin"
    done = run_cli(server.url("start.bin"), "-o", str(dest), "--json", "--retries", "0",
                   "--min-part-size", str(PART), "--max-part-size", str(PART))  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "X-Amz-Signature" in done.stderr  # the URL is shown ...
    for secret in ("SIGSECRET", "CREDSECRET"):  # ... but not its credentials
        assert secret not in done.stdout + done.stderr
        for kept in tmp_path.iterdir():  # the state file above all
            if kept.name != "out.bin.blobdl-tmp":
                assert secret.encode() not in kept.read_bytes(), kept.name
    assert (tmp_path / "out.bin.blobdl-state").exists()


def test_a_token_in_the_users_url_is_never_shown(server: ServerHandle, tmp_path: Path) -> None:
    url = server.route("/status/404") + "?access_token=TOKSECRET&name=a.bin"
    with pytest.raises(BlobdlError) as info:
        Downloader(fast_settings()).download(url, tmp_path / "out.bin")
    assert "TOKSECRET" not in str(info.value) and "name=a.bin" in str(info.value)
    done = run_cli(url, "-o", str(tmp_path / "o.bin"), "--json")
    assert done.returncode == 3
    assert "TOKSECRET" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    "tail",
    ["?name=a.bin#access_token=TOKSECRET&token_type=bearer", "?name=a.bin;sig=TOKSECRET",
     "#id_token=TOKSECRET", "#TOKSECRET-xVq3Zr9Lk2Pw8Nb", "#name=a.bin&TOKSECRET",
     "#=TOKSECRET"],
    ids=["a token in the fragment", "a pair after a semicolon", "a fragment alone",
         "a bare key as the fragment", "a bare key among a fragment's pairs",
         "a key after an = that no name introduces"],
)  # fmt: skip
def test_a_credential_in_a_fragment_or_after_a_semicolon_is_never_shown(
    server: ServerHandle, tmp_path: Path, tail: str
) -> None:
    """An OAuth redirect puts its token in the fragment (``#access_token=``), and ``;`` is
    a query's older separator: a credential there is masked as in any query, in the
    ``--json`` lines, on stderr and in the resume record that a failure keeps. A share
    link puts its decryption key in the fragment bare (``#KEY``, as MEGA's do): nothing
    names it, and a fragment is never sent, so a bare piece of one is masked whatever it
    looks like."""
    blob_url = server.url("frag.bin")
    make_blob(server.root, "frag.bin", 3 * PART)
    server.set_faults({"path": "/files/frag.bin", "action": "close_after", "bytes": 1000,
                       "skip": 1, "times": None})  # fmt: skip
    dest = tmp_path / "out.bin"
    done = run_cli(blob_url + tail, "-o", str(dest), "--json", "--retries", "0",
                   "--min-part-size", str(PART), "--max-part-size", str(PART))  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "frag.bin" in done.stderr and "TOKSECRET" not in done.stdout + done.stderr
    record = tmp_path / "out.bin.blobdl-state"
    assert record.exists() and b"TOKSECRET" not in record.read_bytes()


@pytest.mark.parametrize("password", ["1234/hunter2", "1234?hunter2", "1234#hunter2", "/hunter2"])
def test_a_password_whose_text_before_a_delimiter_looks_like_a_port_is_never_shown(
    tmp_path: Path, password: str
) -> None:
    """``http://localhost:1234/hunter2@host/`` is, to every parser, host localhost, port
    1234 and a path (or query, or fragment) holding ``hunter2@host``: a well-formed URL,
    fetched and failing, its message showing what was meant as a password. An authority
    that could be ``user:password`` followed by an ``@`` is masked up to that ``@``."""
    url = f"http://localhost:{password}@127.0.0.1:9/blob.bin"
    done = run_cli(url, "-o", str(tmp_path / "out"), "--json", "--retries", "0", cwd=tmp_path)
    assert done.returncode in (2, 3), done.stderr
    assert "127.0.0.1:9/blob.bin" in done.stderr
    assert "hunter2" not in done.stdout + done.stderr and "1234" not in done.stderr


# Credentials real services put in a query, by names the first pattern missed, and bare.
QUERY_CREDENTIALS = {
    "a bare key": "?TOKSECRETxVq3Zr9Lk2Pw8Nb",
    "a bare key among pairs": "?name=a.bin&TOKSECRET",
    "a bare lowercase key with digits": "?name=a.bin&toksecret9f3a0c",
    "a value no name introduces": "?name=a.bin&=TOKSECRET",
    "Akamai's token": "?hdnts=exp%3D1~acl%3D%2F*~hmac%3DTOKSECRET",
    "Akamai's cookie-less token": "?__hdnea__=exp%3D1~hmac%3DTOKSECRET",
    "GitHub release assets' jwt": "?sp=r&jwt=TOKSECRET",
    "Cloudflare token authentication": "?verify=1484063137-TOKSECRET",
    "Cloudflare's signing example": "?mac=TOKSECRET&expiry=1",
    "an hmac": "?hmac=TOKSECRET",
    "an OAuth authorization code": "?code=TOKSECRET&state=s",
    "nginx secure_link": "?md5=TOKSECRET&expires=1",
    "a hash": "?hash=TOKSECRET",
    "a bare lowercase key longer than a word": "?name=a.bin&toksecretqvzrplkwmnbxcjh",
    "a bare key that starts with a capital": "?name=a.bin&Toksecret",
    "a credential's name percent-encoded": "?c%6Fde=TOKSECRET&h%61sh=TOKSECRET",
    "a whole name in underscores": "?__hash__=TOKSECRET&_code=TOKSECRET",
}


@pytest.mark.parametrize("tail", QUERY_CREDENTIALS.values(), ids=QUERY_CREDENTIALS.keys())
def test_a_credential_in_the_query_is_never_shown_whatever_names_it(
    server: ServerHandle, tmp_path: Path, tail: str
) -> None:
    """A key pasted bare (``?KEY``), or a signature under a name only its service uses:
    masked on stderr, in the ``--json`` lines, in the resume record a failure keeps and
    in the str() and repr() of the library's error."""
    make_blob(server.root, "query.bin", 3 * PART)
    server.set_faults({"path": "/files/query.bin", "action": "close_after", "bytes": 1000,
                       "skip": 1, "times": None})  # fmt: skip
    dest = tmp_path / "out.bin"
    done = run_cli(server.url("query.bin") + tail, "-o", str(dest), "--json", "--retries", "0",
                   "--min-part-size", str(PART), "--max-part-size", str(PART))  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "query.bin" in done.stderr
    assert "TOKSECRET".lower() not in (done.stdout + done.stderr).lower()
    record = tmp_path / "out.bin.blobdl-state"
    assert record.exists() and b"toksecret" not in record.read_bytes().lower()
    with pytest.raises(BlobdlError) as info:
        Downloader(fast_settings()).download(server.route("/status/404") + tail, dest)
    said = f"{info.value} {info.value!r}".lower()
    assert "/status/404" in said and "toksecret" not in said, said


def test_a_bare_word_in_the_query_is_shown_and_what_is_no_secret_stays() -> None:
    """A bare piece is shown when it reads as a word (``?download``, ``?dl``): lowercase
    letters, ``-`` or ``_``, at most 20. Anything else bare (capitals, digits, longer) is
    masked: a key pasted without a name has no shape a reader can tell from a word's. What
    a signed URL says besides its signature (an expiry, permissions, a version) is shown."""
    from blobdl.config import redact_url

    for shown in ("?download", "?dl", "?raw=1&inline", "?response-content-disposition=x",
                  "?se=2026-01-01T00%3A00Z&sp=r&sv=2018-11-09&sr=b", "?expires=1598024587",
                  "?machine=x86_64&encode=base64&hashes=2", "?state=s"):  # fmt: skip
        assert redact_url(f"https://h/x{shown}") == f"https://h/x{shown}"
    assert redact_url("https://h/x?dl&SECRETKEY&a=1") == "https://h/x?dl&***&a=1"
    assert redact_url("https://h/x?download;0123456789abcdef") == "https://h/x?download;***"
    assert (
        redact_url("https://h/x?jwt=a&code=b&verify=c") == "https://h/x?jwt=***&code=***&verify=***"
    )


def test_redaction_masks_credential_parameters_only() -> None:
    from blobdl.config import redact_url

    shown = redact_url("https://u:p@h/x?X-Amz-Signature=a&sig=b&token=c&part=1&name=k#f")
    assert shown == "https://***@h/x?X-Amz-Signature=***&sig=***&token=***&part=1&name=k#***"
    assert redact_url("https://h/x?a") == "https://h/x?a"
    shown = redact_url("https://h/x?a=1;sig=b&c=2#access_token=d&state=s")
    assert shown == "https://h/x?a=1;sig=***&c=2#access_token=***&state=s"
    assert redact_url("https://h/x#token=t") == "https://h/x#token=***"


def test_every_error_that_names_a_url_shows_no_credential_of_it() -> None:
    """Whatever error class carries a URL, its message, its repr and its pickle show it
    redacted, and a pickle's round trip gives the same message."""
    import blobdl.errors as errors

    url = "https://user:hunter2@h.example/v2/x?X-Amz-Signature=s3cret&token=t0ken"
    with_detail = (errors.AuthRefused, errors.BadResponse, errors.RemoteChanged)
    with_detail += (errors.ConnectionFailed, errors.TLSError)
    made: list[BlobdlError] = [cls(url, "detail") for cls in with_detail]
    made += [errors.TruncatedBody(url, 1, 2), errors.TooManyRedirects(url, 3)]
    made += [errors.HTTPStatusError(404, url)]
    made += [errors.RetriesExhausted(0, 0, 9, 7, errors.HTTPStatusError(503, url))]
    for error in made:
        back = pickle.loads(pickle.dumps(error))
        assert str(back) == str(error) and repr(back) == repr(error)
        for text in (str(error), repr(error), repr(pickle.dumps(error))):
            assert "hunter2" not in text and "s3cret" not in text and "t0ken" not in text, text
        assert "X-Amz-Signature=***" in str(error)


def _secret_url(url: str) -> str:
    return f"{_with_password(url)}?{SIGNED}"


def _assert_no_secret_in(error: BaseException) -> None:
    """Not in what str(), repr() (a log's %r, a chained traceback) or a pickle show."""
    pickled = pickle.dumps(error)
    for secret in (PASSWORD, "SIGSECRET", "CREDSECRET"):
        assert secret not in str(error) and secret not in repr(error), repr(error)
        assert secret.encode() not in pickled
    assert str(pickle.loads(pickled)) == str(error)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_error_from_a_url_with_credentials_keeps_none_in_its_repr_or_pickle(
    server: ServerHandle, tmp_path: Path
) -> None:
    settings = fast_settings(retries=0, max_redirects=2)
    _redirect(server, "/files/loop.bin", server.url("loop.bin"))
    cases = [
        (HTTPStatusError, server.route("/status/404")),
        (TooManyRedirects, server.url("loop.bin")),
        (ConnectionFailed, f"http://127.0.0.1:{_closed_port()}/files/x.bin"),
    ]
    for kind, url in cases:
        with pytest.raises(kind) as info:
            Downloader(settings).download(_secret_url(url), tmp_path / "out.bin")
        _assert_no_secret_in(info.value)


def test_a_batch_items_error_keeps_no_credential_in_its_repr_or_pickle(
    server: ServerHandle, tmp_path: Path
) -> None:
    url = _secret_url(server.route("/status/404"))
    [result] = blobdl.download_many([Item(url, str(tmp_path / "a.bin"))], settings=fast_settings())
    assert isinstance(result.error, HTTPStatusError)
    _assert_no_secret_in(result.error)


@pytest.mark.parametrize("given", ["Authorization Bearer s3cret", "Authorization=s3cret"])
def test_a_malformed_header_is_refused_without_showing_its_value(
    given: str, tmp_path: Path
) -> None:
    done = run_cli("http://127.0.0.1:9/x", "-o", str(tmp_path / "x"), "-H", given)
    assert done.returncode == 2
    assert "not a header" in done.stderr and "Authorization" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout


def test_userinfo_still_authenticates_the_probe_that_refreshes_an_expired_url(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A redirect's target that answers 403 has expired: the URL given is resolved again,
    and the credentials it carried go with it as they did the first time."""
    blob = make(3 * PART, seed=12)
    server.set_faults({"path": f"/files/{blob.name}", "action": "status", "status": 403,
                       "skip": 1})  # fmt: skip
    url = _with_password(server.route(f"/redirect-abs/1/{blob.name}"))
    Downloader(fast_settings()).download(url, tmp_path / "out.bin")
    assert server.stats()["per_path"][f"/redirect-abs/1/{blob.name}"] == 2  # refreshed once
    headers = server.stats()["headers"]
    assert all(h.get("Authorization") == _basic("alice", PASSWORD) for h in headers)


# --- a server's words that echo the request ------------------------------------------------

BASIC = _basic("alice", PASSWORD).partition(" ")[2]
ECHOES = {
    "a header's whole value": "Private-Token s3cret-private is not valid",
    "a key alone": "key s3cret-key has expired",
    "a cookie's value": '{"error": "session s3cret-cookie is over"}',
    "a signature of the URL": "<Error><Code>Denied</Code><Message>sig SIGSECRET</Message></Error>",
    "the URL's password": '{"errors": [{"code": "DENIED", "message": "hunter2pw is wrong"}]}',
    "its Basic credentials": f"credentials {BASIC} refused",
}


@pytest.mark.parametrize("body", ECHOES.values(), ids=ECHOES.keys())
def test_a_server_echoing_a_credential_in_its_refusal_never_gets_it_shown(
    server: ServerHandle, body: str, tmp_path: Path
) -> None:
    """A refusal's words are shown (HTTP 401 ... the answer says ...): a server that
    echoes what it refused ("token X has expired") had the user's header values, the URL's
    password or its signature printed on stderr, in --json events and in the error's
    repr and pickle. They are masked in the words, before these are cut."""
    server.set_faults({"path": "/files/x.bin", "action": "status", "status": 401, "body": body,
                       "times": None})  # fmt: skip
    url = _with_password(server.url("x.bin")) + "?X-Amz-Signature=SIGSECRET&n=1"
    headers = {k: v for k, v in SECRETS.items() if k != "Authorization"}  # the URL's is sent
    secrets = ("s3cret-private", "s3cret-key", "s3cret-cookie", "SIGSECRET", PASSWORD, BASIC)
    settings = fast_settings(headers=tuple(headers.items()), retries=0)
    with pytest.raises(HTTPStatusError) as info:
        Downloader(settings).download(url, tmp_path / "out.bin")
    assert "the answer says" in str(info.value)  # the words are still shown...
    shown = str(info.value) + repr(info.value) + str(pickle.dumps(info.value))
    assert not [s for s in secrets if s in shown], shown  # ... without the secret
    done = run_cli(url, "-o", str(tmp_path / "o.bin"), "--json", "--retries", "0",
                   *_header_args(headers))  # fmt: skip
    assert done.returncode == 3 and "the answer says" in done.stderr, done.stderr
    assert not [s for s in secrets if s in done.stdout + done.stderr], done.stderr


def test_a_redirect_target_echoing_its_signature_in_a_parts_refusal_never_shows_it(
    server: ServerHandle, other: ServerHandle, other_blob: Blob, tmp_path: Path
) -> None:
    """The same for a part's request at a presigned target, refused after the probe."""
    _redirect(server, "/files/start.bin", f"{other_blob.url}?{SIGNED}")
    words = "signature SIGSECRET of CREDSECRET: bad part"
    other.set_faults({"path": "/files/other.bin", "action": "status", "status": 400, "skip": 1,
                      "body": words, "times": None})  # fmt: skip
    with pytest.raises(HTTPStatusError) as info:
        Downloader(fast_settings(retries=0)).download(server.url("start.bin"), tmp_path / "o")
    assert "bad part" in str(info.value)
    assert "SIGSECRET" not in str(info.value) and "CREDSECRET" not in repr(info.value)
