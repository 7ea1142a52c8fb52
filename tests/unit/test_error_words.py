"""The words of an error answer's body (``blobdl.http._error_words.said``): the shapes a
store, a registry or a CDN answers in, and what says nothing."""

from __future__ import annotations

import pytest

from blobdl.http._error_words import ERROR_BODY, _restates, said

S3 = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message>"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (S3 + b"<StringToSign>SECRET</StringToSign></Error>", "AccessDenied: Request has expired"),
        ((S3 + b"<HostId>" + b"x" * ERROR_BODY)[:ERROR_BODY], "AccessDenied: Request has expired"),
        (b"<Error><Message>no code</Message></Error>", "no code"),
        (b'{"error": {"code": 403, "message": "m", "status": "PERMISSION_DENIED"}}',
         "PERMISSION_DENIED: m"),
        (b'{"error": "invalid_token", "error_description": "x"}', "invalid_token"),
        (b'{"errors": [{"code": "DENIED", "message": "no"}]}', "DENIED: no"),
        (b"  Forbidden\r\n\r\n", "Forbidden"),
        (b"<html><Error><Code>X</Code></Error></html>", ""),
        (b"<!DOCTYPE html><title>403</title>", ""),
        (b"<Error><StringToSign>SECRET</StringToSign></Error>", ""),
        (b"[" * ERROR_BODY, ""),
        (b'{"error": {"code": 403}}', ""),
        (b"", ""),
    ],
    ids=["S3, secrets left out", "S3 cut at the read's end", "a message alone", "GCS JSON",
         "a token server", "OCI", "a CDN's text", "HTML holding an error", "HTML",
         "secrets only", "nested deep", "a code that is the status", "nothing"],
)  # fmt: skip
def test_an_error_body_says(body: bytes, words: str) -> None:
    assert said(body) == words


@pytest.mark.parametrize(
    ("words", "status", "reason", "restates"),
    [
        ("404 Not Found", 404, "Not Found", True),
        ("Error 403: Forbidden", 403, "Forbidden", True),
        ("forbidden", 403, "", True),  # the standard phrase, whatever the server's reason
        ("403 Forbidden: hotlinking is off", 403, "Forbidden", False),
        ("AccessDenied: Request has expired", 403, "Forbidden", False),
        ("Not Found", 403, "Forbidden", False),  # another status's phrase says something
        ("", 404, "Not Found", True),
    ],
)  # fmt: skip
def test_words_that_restate_the_status_line_say_nothing(
    words: str, status: int, reason: str, restates: bool
) -> None:
    assert _restates(words, status, reason) is restates
