"""One exception root for everything blobdl raises.

Every class keeps its constructor arguments in ``self.args`` (in order), so the default
``BaseException.__reduce__`` rebuilds it: errors cross from worker processes to the
coordinator through a pipe, and must pickle.

An error that names a URL keeps only its redacted form (``redact_url``, in the constructor),
in ``args`` as in ``url``: ``repr()``, a log's ``%r``, a chained traceback and a pickle that
crosses processes show what ``str()`` shows, never a password or a signature.

``exit_code`` is the CLI's exit status for the error; ``retryable`` tells the coordinator
whether another attempt at the same byte range might succeed.
"""

from __future__ import annotations

import errno
from urllib.parse import urlsplit

from ._redact import redact_url

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_NETWORK = 3
EXIT_INTEGRITY = 4
EXIT_LOCAL = 5
EXIT_INTERRUPTED = 130


class BlobdlError(Exception):
    """Root of all blobdl errors."""

    exit_code = EXIT_INTERNAL
    retryable = False


# --- bad input ------------------------------------------------------------------------------


class UsageError(BlobdlError, ValueError):
    """Invalid input: a bad URL, scheme, setting or argument."""

    exit_code = EXIT_USAGE


# --- the network and the remote -------------------------------------------------------------


class NetworkError(BlobdlError):
    """The remote could not be reached or talked to; usually worth another attempt."""

    exit_code = EXIT_NETWORK
    retryable = True


class ConnectionFailed(NetworkError):
    """Connecting, sending or receiving failed (refused, reset, DNS, timeout)."""

    def __init__(self, url: str, detail: str) -> None:
        url = redact_url(url)
        super().__init__(url, detail)
        self.url, self.detail = url, detail

    def __str__(self) -> str:
        return f"{self.detail} ({self.url})"


class TLSError(ConnectionFailed):
    """The TLS handshake or certificate check failed; another attempt will not help."""

    retryable = False


class ConnectionForbidden(ConnectionFailed):
    """This machine forbids the connection (EACCES, EPERM at connect: a local firewall's
    rule, a sandbox's); the rule holds for the next attempt too."""

    retryable = False


class ProxyRefused(ConnectionFailed):
    """The proxy refused CONNECT by its policy (403: a ``ConnectPort`` or filter rule; 404,
    405) or capability (501), or for any other answer but one its upstream may outgrow
    (500, 502, 503, 504, 408, 425, 429). Another attempt asks the same proxy the same."""

    retryable = False


class ProxyAuthRequired(ProxyRefused):
    """The proxy answered 407 (to a forwarded request or to CONNECT): it wants credentials
    it was not given, or refused the ones it was. Another attempt sends the same ones."""


class ProxyNotHTTP(ConnectionFailed):
    """The proxy answered with bytes that are no HTTP at all (a SOCKS or SSH server given as
    an HTTP proxy): it will not start to speak HTTP on the next attempt. One that closes
    without a word, or cuts its answer short, may be restarting: that is retried."""

    retryable = False


class TruncatedBody(NetworkError):
    """The body ended before the bytes the response promised."""

    def __init__(self, url: str, got: int, expected: int) -> None:
        url = redact_url(url)
        super().__init__(url, got, expected)
        self.url, self.got, self.expected = url, got, expected

    def __str__(self) -> str:
        return (
            f"connection to {_peer(self.url)} closed early, after {self.got} of "
            f"{self.expected} bytes ({self.url})"
        )


def _peer(url: str) -> str:
    """``host port N`` of ``url``, as an error line names whom we talked to."""
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return "the server"
    host = parts.hostname or "the server"
    return f"{host} port {port}" if port else host


class Stalled(NetworkError):
    """No byte arrived for the stall timeout (including no status line at all)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds

    def __str__(self) -> str:
        return f"no progress for {self.seconds:g} s"


class WorkerCrashed(NetworkError):
    """A worker process (or another child of ours: ``what``) died without reporting;
    ``exitcode`` None where the system reaped it first (the caller ignores SIGCHLD, or
    reaps every child itself), and nobody can know how it ended."""

    def __init__(self, exitcode: int | None, what: str = "worker process") -> None:
        super().__init__(exitcode, what)
        self.exitcode, self.what = exitcode, what

    def __str__(self) -> str:
        if self.exitcode is None:  # reaped before we could look: its status is gone
            return f"{self.what} died (its exit status is lost: this process ignores SIGCHLD)"
        return f"{self.what} died (exit code {self.exitcode})"


_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# 5xx that say what the server (or a proxy) cannot or will not do, not that it failed:
# not implemented, this HTTP version, a captive portal's login (curl retries none of them).
_FINAL_5XX = frozenset({501, 505, 511})


def retryable_status(status: int) -> bool:
    """Whether another attempt may get another answer than ``status``: a request timeout,
    too many requests, a server or its upstream failing; never a 4xx policy or a capability."""
    if status in _RETRYABLE_STATUS:
        return True
    return 500 <= status < 600 and status not in _FINAL_5XX


class HTTPStatusError(NetworkError):
    """The server answered with an error status. ``redirected``: the URL that answered
    was a redirect's target for this request alone (a mirror, a signed URL handed out per
    request), not the one the download pinned. ``said``: what the server says of it, in a
    few words (a registry's error body), or ""."""

    def __init__(
        self,
        status: int,
        url: str,
        retry_after: float | None = None,
        redirected: bool = False,
        said: str = "",
    ) -> None:
        url = redact_url(url)
        super().__init__(status, url, retry_after, redirected, said)
        self.status, self.url, self.retry_after = status, url, retry_after
        self.redirected, self.said = redirected, said
        self.retryable = retryable_status(status)

    def __str__(self) -> str:
        return f"HTTP {self.status} from {self.url}" + (f": {self.said}" if self.said else "")


class TooManyRedirects(NetworkError):
    """The redirect chain was longer than the limit (or looped)."""

    retryable = False

    def __init__(self, url: str, limit: int) -> None:
        url = redact_url(url)
        super().__init__(url, limit)
        self.url, self.limit = url, limit

    def __str__(self) -> str:
        return f"more than {self.limit} redirects starting at {self.url}"


class RetriesExhausted(NetworkError):
    """A part failed more times in a row than the retry limit allows."""

    retryable = False

    def __init__(
        self, part: int, start: int, end: int, attempts: int, last_error: BaseException
    ) -> None:
        super().__init__(part, start, end, attempts, last_error)
        self.part, self.start, self.end = part, start, end
        self.attempts, self.last_error = attempts, last_error
        inner = getattr(last_error, "exit_code", EXIT_NETWORK)
        self.exit_code = inner if isinstance(inner, int) else EXIT_NETWORK

    def __str__(self) -> str:
        # A part of a blob of unknown size has no end (-1): "bytes 0-", as a Range says it.
        last = self.end - 1 if self.end > self.start else ""
        return (
            f"part {self.part} (bytes {self.start}-{last}) failed after "
            f"{self.attempts} attempts: {self.last_error}"
        )


# --- a registry: what a pull is told -----------------------------------------------------


class ModelNotFound(NetworkError):
    """The registry does not know the model, the tag or a blob the manifest names."""

    retryable = False

    def __init__(self, reference: str, detail: str = "") -> None:
        super().__init__(reference, detail)
        self.reference, self.detail = reference, detail

    def __str__(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"model not found: {self.reference}{extra}"


class AuthRefused(NetworkError):
    """The registry (or its token server) refused the credentials, or none were found."""

    retryable = False

    def __init__(self, url: str, detail: str) -> None:
        url = redact_url(url)
        super().__init__(url, detail)
        self.url, self.detail = url, detail

    def __str__(self) -> str:
        return f"authentication refused: {self.detail} ({self.url})"


class UnsupportedManifest(BlobdlError):
    """The reference names something that is not a single image manifest (an index, say)."""

    exit_code = EXIT_NETWORK

    def __init__(self, reference: str, media_type: str) -> None:
        super().__init__(reference, media_type)
        self.reference, self.media_type = reference, media_type

    def __str__(self) -> str:
        return f"unsupported manifest for {self.reference}: {self.media_type or 'no media type'}"


# --- the Hugging Face Hub: what ``hf_download`` is told ---------------------------------------


class RepositoryNotFound(NetworkError):
    """The Hub has no such repository, or it is private and the token sent (if any) cannot
    see it: the Hub answers both the same way. ``detail``: what the user can do; ``said``:
    what the Hub says of it (its ``X-Error-Message``, made one line), or ""."""

    retryable = False

    def __init__(self, repo: str, detail: str = "", said: str = "") -> None:
        super().__init__(repo, detail, said)
        self.repo, self.detail, self.said = repo, detail, said

    def __str__(self) -> str:
        return f"repository not found: {self.repo}{_aside(self.detail, self.said)}"


class GatedRepository(RepositoryNotFound):
    """The repository is gated: its files need a token whose owner was granted access.
    A ``RepositoryNotFound`` too, as huggingface_hub's ``GatedRepoError`` is."""

    def __str__(self) -> str:
        return f"gated repository: {self.repo}{_aside(self.detail, self.said)}"


class RevisionNotFound(NetworkError):
    """The repository has no such branch, tag or commit (``said``: as for
    ``RepositoryNotFound``)."""

    retryable = False

    def __init__(self, repo: str, revision: str, said: str = "") -> None:
        super().__init__(repo, revision, said)
        self.repo, self.revision, self.said = repo, revision, said

    def __str__(self) -> str:
        has = f"{self.repo} has no revision {self.revision!r}"
        return f"revision not found: {has}{_aside(self.said)}"


class EntryNotFound(NetworkError):
    """The repository has no such file at that revision (``said``: as for
    ``RepositoryNotFound``)."""

    retryable = False

    def __init__(self, repo: str, revision: str, path: str, said: str = "") -> None:
        super().__init__(repo, revision, path, said)
        self.repo, self.revision, self.path, self.said = repo, revision, path, said

    def __str__(self) -> str:
        has = f"{self.repo} has no {self.path!r} at revision {self.revision!r}"
        return f"file not found: {has}{_aside(self.said)}"


def _aside(*parts: str) -> str:
    """`` (what to do; what the Hub says)``, of the parts there are."""
    given = "; ".join(p for p in parts if p)
    return f" ({given})" if given else ""


class OfflineNotCached(UsageError):
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) forbids asking the Hub, and the disk
    does not hold what was asked for (``problem`` says what lacks): the environment and the
    request contradict each other, as huggingface_hub's ``LocalEntryNotFoundError`` says."""

    def __init__(self, variable: str, repo: str, revision: str, problem: str) -> None:
        super().__init__(variable, repo, revision, problem)
        self.variable, self.repo, self.revision, self.problem = variable, repo, revision, problem

    def __str__(self) -> str:
        return (
            f"{self.variable} is on (the Hub is not asked), and {self.repo} at revision "
            f"{self.revision!r} is not all on disk: {self.problem}"
        )


# --- integrity: the bytes or the remote are not what was promised ---------------------------


class IntegrityError(BlobdlError):
    """The remote broke its promises or the bytes do not match; never retried blindly."""

    exit_code = EXIT_INTEGRITY


class RemoteChanged(IntegrityError):
    """The blob changed on the server while (or since) it was being downloaded."""

    def __init__(self, url: str, detail: str) -> None:
        url = redact_url(url)
        super().__init__(url, detail)
        self.url, self.detail = url, detail

    def __str__(self) -> str:
        return f"remote changed: {self.detail} ({self.url})"


class BadResponse(IntegrityError):
    """A response that breaks the protocol: wrong Content-Range, 200 to a range, etc.

    Checked before a byte of its body is written, and often one flaky edge's doing: it
    counts against the part's retries, and only one that persists ends the download."""

    retryable = True

    def __init__(self, url: str, detail: str) -> None:
        url = redact_url(url)
        super().__init__(url, detail)
        self.url, self.detail = url, detail

    def __str__(self) -> str:
        return f"bad response: {self.detail} ({self.url})"


class BadRedirect(BadResponse):
    """A server pointed to a URL blobdl never goes to (another scheme, no host, a port out
    of range; in a redirect or a token realm). The same answer comes on every retry, so the
    first one ends the download, as a redirect loop does."""

    retryable = False


class DigestMismatch(IntegrityError):
    """The downloaded bytes do not hash to the expected digest."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(expected, actual)
        self.expected, self.actual = expected, actual

    def __str__(self) -> str:
        return f"digest mismatch: expected {self.expected}, got {self.actual}"


# --- the local side -------------------------------------------------------------------------


class LocalFileError(BlobdlError):
    """The destination cannot be written: missing directory, permissions, disk full, I/O."""

    exit_code = EXIT_LOCAL

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(path, detail)
        self.path, self.detail = path, detail

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


class PartialChanged(LocalFileError):
    """Another program replaced or truncated the temporary file while the download wrote
    it: the bytes at its name are not the ones written, and no record may vouch for them."""


class InsufficientSpace(LocalFileError):
    """Not enough free space on the destination's filesystem."""

    def __init__(self, path: str, needed: int, free: int) -> None:
        BlobdlError.__init__(self, path, needed, free)
        self.path, self.needed, self.free = path, needed, free
        self.detail = f"needs {needed} bytes but only {free} are free"


class OutOfResources(BlobdlError):
    """This machine refused what a download needs: file descriptors, processes, memory."""

    exit_code = EXIT_LOCAL

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(what, detail)
        self.what, self.detail = what, detail

    def __str__(self) -> str:
        return f"cannot {self.what}: {self.detail}"

    @classmethod
    def refused(cls, what: str, error: OSError) -> OutOfResources:
        """The system's refusal (EMFILE, EAGAIN, ENOMEM...) with what the user can change."""
        hint = _RESOURCE_HINTS.get(error.errno or 0, "")
        return cls(what, f"{error.strerror or error}{hint}")


# What to change when the system refuses.
_RESOURCE_HINTS = {
    errno.EMFILE: " (raise the open-file limit, ulimit -n, or use fewer --connections)",
    errno.ENFILE: " (the system's open-file table is full)",
    errno.EAGAIN: " (too many processes: raise ulimit -u, or use fewer --processes)",
    errno.ENOMEM: " (not enough memory)",
}


class Interrupted(BlobdlError):
    """The download was stopped by SIGINT or SIGTERM; ``detail``: what the stop could not
    do, in the user's words ("" when it did all)."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(signum, detail)
        self.signum, self.detail = signum, detail

    def __str__(self) -> str:
        said = f"interrupted by signal {self.signum}"
        return f"{said}; {self.detail}" if self.detail else said


class DestinationLocked(LocalFileError):
    """Another download is writing the same destination."""

    def __init__(self, path: str, holder: int | None, ours: bool = False) -> None:
        BlobdlError.__init__(self, path, holder, ours)
        self.path, self.holder = path, holder
        if ours:  # held up the caller's own stack: a callback's download of what it writes
            self.detail = (
                "this process's own download is writing this destination "
                "(a callback asked for what its download writes)"
            )
            return
        who = f"process {holder}" if holder else "another process"
        self.detail = f"{who} is already downloading to this destination"


class DestinationExists(LocalFileError):
    """The destination exists and nothing says it may be replaced."""

    def __init__(self, path: str) -> None:
        BlobdlError.__init__(self, path)
        self.path = path
        self.detail = (
            "already exists (give a digest to check it, or --force (force=True) to replace it)"
        )


# --- a Dask cluster ---------------------------------------------------------------------------


class ClusterError(NetworkError):
    """The Dask cluster failed the batch: its scheduler was lost, or an item's workers kept
    dying (each death reruns the item elsewhere, up to the scheduler's ``allowed-failures``)."""

    retryable = False

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return self.detail
