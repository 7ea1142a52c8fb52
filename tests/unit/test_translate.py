"""Errors are translated at the HTTP edge by their type, never by their message text."""

from __future__ import annotations

import ssl

import pytest
from urllib3.exceptions import SSLError

from blobdl.errors import ConnectionFailed, TLSError
from blobdl.http._translate import translate_errors

URL = "https://h/blob"


def verification(message: str) -> ssl.SSLCertVerificationError:
    return ssl.SSLCertVerificationError(1, message)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (verification("[SSL: CERTIFICATE_VERIFY_FAILED] self-signed"), TLSError),
        (verification("any words at all"), TLSError),  # the type says it, not the text
        (SSLError(verification("wrapped by urllib3")), TLSError),
        (ssl.SSLError(1, "hostname in a message is no verification failure"), ConnectionFailed),
        (SSLError("TLS alert: hostname, CERTIFICATE_VERIFY_FAILED (text only)"), ConnectionFailed),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), ConnectionFailed),
    ],
)
def test_tls_errors_are_classified_by_type(raised: BaseException, expected: type) -> None:
    with pytest.raises(ConnectionFailed) as caught, translate_errors(URL):
        raise raised
    assert caught.type is expected  # TLSError (final) is a ConnectionFailed (retried) too
