"""Error translation: whatever urllib3, http.client, ssl or the socket layer raise becomes a
``blobdl`` error here, so the engine reasons about our errors only.
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import InvalidHeader, LocationParseError, SSLError
from urllib3.util.ssl_match_hostname import CertificateError

from .._redact import redact_url
from ..errors import BadResponse, BlobdlError, ConnectionFailed, TLSError, UsageError
from ._interim import InterimError


@contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Turn urllib3, http.client and socket errors into blobdl errors."""
    try:
        yield
    except BlobdlError:
        raise
    except (SSLError, ssl.SSLError, CertificateError) as exc:
        if _certificate_refused(exc):
            raise TLSError(url, f"TLS verification failed: {exc}") from None
        raise ConnectionFailed(url, f"TLS error: {exc}") from None
    except LocationParseError:
        raise UsageError(f"invalid URL {redact_url(url)!r}: cannot be parsed") from None
    except InvalidHeader as exc:  # e.g. Content-Length: 12, 13
        raise BadResponse(url, f"invalid header: {exc}") from None
    except UnicodeError as exc:  # an IDNA failure in the socket layer; check_url should catch it
        raise UsageError(f"invalid host in {redact_url(url)!r}: {exc}") from None
    except TimeoutError as exc:
        raise ConnectionFailed(url, f"timed out: {exc}") from None
    except http.client.IncompleteRead as exc:
        raise ConnectionFailed(url, f"connection closed early: {exc!r}") from None
    except (Urllib3Error, http.client.HTTPException, OSError) as exc:
        interim = _inner(exc, InterimError)
        if interim is not None:  # a 101, or endless 1xx: the server broke the protocol
            raise BadResponse(url, str(interim)) from None
        if _certificate_refused(exc):  # e.g. a ProxyError wrapping the proxy's certificate
            raise TLSError(url, f"TLS verification failed: {exc}") from None
        raise ConnectionFailed(url, f"{type(exc).__name__}: {exc}") from None


def _certificate_refused(exc: BaseException) -> bool:
    """Whether the certificate (or the host name it names) was refused, by the error's type:
    ``ssl.SSLCertVerificationError`` or urllib3's ``CertificateError``, wherever urllib3
    wrapped it."""
    return _inner(exc, (ssl.SSLCertVerificationError, CertificateError)) is not None


_Kind = TypeVar("_Kind", bound=BaseException)


def _inner(
    exc: BaseException, kind: type[_Kind] | tuple[type[_Kind], ...], depth: int = 0
) -> _Kind | None:
    """``exc`` or the first error of ``kind`` it wraps (urllib3's exceptions carry the
    original in ``args`` or as the cause), None if there is none."""
    if isinstance(exc, kind):
        return exc
    if depth > 4:
        return None
    inner = [a for a in exc.args if isinstance(a, BaseException)]
    inner += [e for e in (exc.__cause__, exc.__context__) if e is not None]
    for candidate in inner:
        found = _inner(candidate, kind, depth + 1)
        if found is not None:
            return found
    return None
