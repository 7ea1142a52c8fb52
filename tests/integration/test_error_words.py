"""A download's server says why it refuses: its error answer's words in the error line.

S3 and the stores that speak its dialect (GCS's XML API, Azure Blob) answer a refusal with
an XML ``<Error>`` whose ``Code`` and ``Message`` say why ("AccessDenied: Request has
expired", the presigned URL our users meet most); GCS's JSON API and Azure's JSON ones an
``{"error": {...}}`` object; a CDN a short text. blobdl shows the code and message (or the
short text) after the status, escaped and cut, on stderr, in the ``failed`` event and in a
library error's ``str``; an HTML page says nothing; the body is read only as far as its
words need; and what an S3 error echoes of the request (the string it signed, the
canonical request, the signature and the access key id) is never shown.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from blobdl import Downloader
from blobdl.errors import HTTPStatusError
from faultserver.registry import S3Server, start_s3
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, run_cli

Make = Callable[..., Blob]
XML = {"Content-Type": "application/xml"}
JSON = {"Content-Type": "application/json; charset=UTF-8"}
SECRETS = ("AKIAEXAMPLESECRET", "STRINGTOSIGNSECRET", "CANONICALSECRET", "f00dfacesecret")

# What S3 answers a presigned URL past its X-Amz-Expires (as AWS sends it, on one line).
S3_EXPIRED = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    "<Message>Request has expired</Message><X-Amz-Expires>60</X-Amz-Expires>"
    "<Expires>2024-05-01T10:01:00Z</Expires><ServerTime>2024-05-01T11:00:00Z</ServerTime>"
    "<RequestId>7Q8WZ</RequestId><HostId>abc=</HostId></Error>"
)
# What S3 answers a signature that does not match: it echoes what it signed.
S3_SIGNATURE = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SignatureDoesNotMatch</Code>'
    "<Message>The request signature we calculated does not match the signature you provided."
    " Check your key and signing method.</Message>"
    "<AWSAccessKeyId>AKIAEXAMPLESECRET</AWSAccessKeyId>"
    "<StringToSign>AWS4-HMAC-SHA256\n20240501T100000Z\nSTRINGTOSIGNSECRET</StringToSign>"
    "<SignatureProvided>f00dfacesecret</SignatureProvided>"
    "<StringToSignBytes>41 57 53 34</StringToSignBytes>"
    "<CanonicalRequest>GET\n/bucket/key\nX-Amz-Credential=CANONICALSECRET</CanonicalRequest>"
    "<CanonicalRequestBytes>47 45 54</CanonicalRequestBytes>"
    "<RequestId>7Q8WZ</RequestId><HostId>abc=</HostId></Error>"
)
AZURE = (
    '\ufeff<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code>'
    "<Message>Server failed to authenticate the request. Make sure the value of "
    "Authorization header is formed correctly including the signature.\n"
    "RequestId:4b5c\nTime:2024-05-01T10:00:00.0000000Z</Message>"
    "<AuthenticationErrorDetail>Signature did not match. String to sign used was "
    "r\n2024-05-01\nSTRINGTOSIGNSECRET</AuthenticationErrorDetail></Error>"
)
GCS_JSON = json.dumps({"error": {"code": 403, "message": "Anonymous caller does not have "
    "storage.objects.get access to the Google Cloud Storage object.", "errors": [
    {"message": "Anonymous caller does not have storage.objects.get access",
     "domain": "global", "reason": "forbidden"}]}})  # fmt: skip
GCS_XML = (
    "<?xml version='1.0' encoding='UTF-8'?><Error><Code>ExpiredToken</Code>"
    "<Message>Invalid argument.</Message><Details>The provided token has expired. "
    "Request signature expired at: 2024-05-01T10:01:00+00:00</Details></Error>"
)

SHAPES = {
    "S3 expired presigned URL": (403, XML, S3_EXPIRED, "AccessDenied: Request has expired"),
    "S3 signature": (403, XML, S3_SIGNATURE, "SignatureDoesNotMatch: The request signature we "
                     "calculated does not match the signature you provided."),
    "S3 escaped text": (403, XML, "<Error><Code>AccessDenied</Code><Message>a &amp; b &lt;c&gt;"
                        "</Message></Error>", "AccessDenied: a & b <c>"),
    "GCS XML": (400, XML, GCS_XML, "ExpiredToken: Invalid argument."),
    "GCS JSON": (403, JSON, GCS_JSON, "Anonymous caller does not have storage.objects.get "
                 "access to the Google Cloud Storage object."),
    "Azure JSON": (403, JSON, '{"error": {"code": "AuthorizationFailure", "message": '
                   '"This request is not authorized."}}',
                   "AuthorizationFailure: This request is not authorized."),
    "Azure XML": (403, XML, AZURE, "AuthenticationFailed: Server failed to authenticate the "
                  "request. Make sure the value of Authorization header is formed correctly "
                  "including the signature. RequestId:4b5c Time:2024-05-01T10:00:00"),
    "CDN text": (403, {"Content-Type": "text/plain"}, "Access denied: hotlinking\n",
                 "Access denied: hotlinking"),
}  # fmt: skip


def refusing(server: ServerHandle, blob: Blob, status: int, headers: dict[str, str],
             body: str, skip: int = 0) -> None:  # fmt: skip
    server.set_faults({"path": f"/files/{blob.name}", "action": "status", "status": status,
                       "headers": headers, "body": body, "skip": skip, "times": None})  # fmt: skip


def said(done: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """The error line on stderr and the ``failed`` event's error, of a --json run."""
    assert done.returncode != 0, done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if ln.strip()]
    failed = [e for e in map(json.loads, done.stdout.splitlines()) if e["event"] == "failed"]
    assert len(failed) == 1, done.stdout
    return line, failed[0]["error"]


def cli(url: str, tmp_path: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return run_cli(url, "-o", str(tmp_path / "out"), "--json", "--retries", "0",
                   "--min-part-size", str(PART), "--max-part-size", str(PART), *more)  # fmt: skip


@pytest.mark.parametrize(("status", "headers", "body", "words"), SHAPES.values(), ids=SHAPES)
def test_a_refused_probe_says_the_servers_words(
    make: Make, server: ServerHandle, tmp_path: Path,
    status: int, headers: dict[str, str], body: str, words: str,
) -> None:  # fmt: skip
    blob = make(PART)
    refusing(server, blob, status, headers, body)
    line, event = said(cli(blob.url, tmp_path))
    for text in (line, event):
        assert f"HTTP {status} from {blob.url}: the answer says {words}" in text, text
        assert not any(secret in text for secret in SECRETS), text
    with pytest.raises(HTTPStatusError) as caught:
        Downloader(fast_settings(retries=0)).download(blob.url, tmp_path / "lib")
    assert words in str(caught.value) and caught.value.status == status


def test_a_refused_part_says_the_servers_words(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """The probe goes through; a part's GET is refused (the signature expired meanwhile)."""
    blob = make(4 * PART)
    refusing(server, blob, 403, XML, S3_EXPIRED, skip=1)
    line, event = said(cli(blob.url, tmp_path, "--connections", "1"))
    for text in (line, event):
        assert "HTTP 403" in text and "the answer says AccessDenied: Request has expired" in text


def test_a_batch_item_refused_says_the_servers_words(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(PART)
    refusing(server, blob, 403, XML, S3_SIGNATURE)
    manifest = tmp_path / "manifest"
    manifest.write_text(f"{blob.url} {tmp_path / 'o'}\n")
    done = run_cli("-i", str(manifest), "--json", "--retries", "0")
    assert done.returncode != 0
    events = [json.loads(ln) for ln in done.stdout.splitlines()]
    (failed,) = [e for e in events if e["event"] == "failed"]
    plain = run_cli("-i", str(manifest), "--retries", "0")
    for text in (failed["error"], plain.stderr):
        assert "the answer says SignatureDoesNotMatch: The request signature" in text, text
        assert not any(secret in text for secret in SECRETS), text


NOTHING = {
    "an HTML page": ("text/html", "<!DOCTYPE html><html><body><h1>403 Forbidden</h1>"
                     "<Error><Code>X</Code></Error></body></html>"),
    "XML that is no error": ("application/xml", "<ListBucketResult><Code>X</Code>"
                             "</ListBucketResult>"),
    "an error of secrets only": ("application/xml", "<Error><StringToSign>STRINGTOSIGNSECRET"
                                 "</StringToSign></Error>"),
    "no body": ("text/plain", ""),
}  # fmt: skip


@pytest.mark.parametrize(("kind", "body"), NOTHING.values(), ids=NOTHING)
def test_an_error_body_with_no_words_leaves_the_status_alone(
    make: Make, server: ServerHandle, tmp_path: Path, kind: str, body: str
) -> None:
    blob = make(PART)
    refusing(server, blob, 403, {"Content-Type": kind}, body)
    for text in said(cli(blob.url, tmp_path)):
        assert text.endswith(f"HTTP 403 from {blob.url}"), text


def test_the_servers_words_are_escaped_and_cut(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(PART)
    message = "\x1b]0;pwned\x07\x1b[2J\rOK\u202e" + "x" * 5000
    refusing(server, blob, 403, XML, f"<Error><Code>AccessDenied</Code><Message>{message}"
             "</Message></Error>")  # fmt: skip
    for text in said(cli(blob.url, tmp_path)):
        assert r"AccessDenied: \x1b]0;pwned\x07\x1b[2J OK\u202e" in text, text  # one line
        assert "more characters)" in text and len(text) < 600, text


def test_a_downloads_huge_error_body_is_read_only_as_far_as_its_words_need(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A "10 GB" error body of which 20 KiB come, then silence: the words are in its
    first bytes, and a reader that waited for the rest would see the stall, not them."""
    blob = make(PART)
    text = "Access denied: hotlinking " + "x" * (20 << 10)
    head = f"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: {10 << 30}"
    server.set_faults({"path": f"/files/{blob.name}", "action": "raw", "times": None,
                       "send": f"{head}\r\n\r\n{text}"})  # fmt: skip
    for said_ in said(cli(blob.url, tmp_path, "--stall-timeout", "30")):
        assert "HTTP 403" in said_ and "the answer says Access denied: hotlinking xxx" in said_


# --- a real S3-compatible store (moto) -----------------------------------------------------------


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    store = start_s3(tmp_path_factory.mktemp("s3"))
    try:
        store.create_bucket("words")
        yield store
    finally:
        store.stop()


def test_a_missing_key_in_an_s3_store_says_no_such_key(s3: S3Server, tmp_path: Path) -> None:
    url = f"{s3.url}/words/no/such/key.bin"
    line, event = said(cli(url, tmp_path))
    for text in (line, event):
        assert f"HTTP 404 from {url}: the answer says NoSuchKey: The specified key does not " \
               "exist." in text, text  # fmt: skip
