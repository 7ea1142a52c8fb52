"""The Hub's API, as much as a download needs: which commit a revision names, which files
that commit holds, and where each file is resolved.

Requests go through the HTTP edge (``blobdl/http``: our pools with TLS and proxy routes,
error translation, the retry policy). The token goes to the Hub's own origin only: an API
redirect elsewhere, or a next page on another origin, is refused, and a file's ``resolve``
URL is handed to the engine, whose probe drops the token when the Hub redirects to storage.
The Hub's ``X-Error-Code`` becomes one of our errors here.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, NamedTuple
from urllib.parse import quote, urljoin

from .._redact import hidden, secrets_of
from ..config import Settings
from ..errors import (
    AuthRefused,
    BadResponse,
    BlobdlError,
    EntryNotFound,
    GatedRepository,
    HTTPStatusError,
    RepositoryNotFound,
    RevisionNotFound,
    TooManyRedirects,
)
from ..http._error_words import error_body, said, said_in_header
from ..http._pool import make_pool, prepare_tls
from ..http._redirects import REDIRECTS
from ..http._request import base_headers, read_upto, require_identity, retry_after, send_get
from ..http._retry import Retry
from ..http._translate import translate_errors
from ..http._urls import CROSS_ORIGIN_SAFE, same_origin, url_problem
from ._env import Token
from ._repo import Repo, RepoFile, check_commit, check_listing, parse_tree_page

MAX_DOCUMENT = 64 << 20  # bytes of one API answer (a big repository's revision info is MBs)
# Bytes of one tree page: the Hub sends 1,000 entries a page, 4.5 MB with paths of the
# longest kind (4 KiB); a JSON page parses to several times its size in memory.
MAX_PAGE = 16 << 20
# The whole listing of a commit. The Hub advises fewer than 100,000 files a repository;
# the largest public ones list about 10^6, some 250 bytes of JSON and 500 of memory each.
# Twice that is a bound no real listing reaches, and holds a hostile Hub's endless
# listing to about a gigabyte of memory: entries for short paths, bytes for long ones.
MAX_LISTED = 2_000_000  # entries, files and folders
MAX_LISTING = 512 << 20  # bytes of its pages and their URLs
MAX_PAGES = 100_000  # tree pages of one commit (an empty page with a next one is a few bytes)
# Pages in a row that list nothing yet name a next one. The Hub's pages are full but the
# last; a page left empty by whatever it hides may happen, 16 in a row is a listing that
# goes nowhere (it would reach MAX_PAGES only after 100,000 requests).
MAX_EMPTY = 16
_OK = frozenset({200})
_REACHED = frozenset({200, 206, 416}) | REDIRECTS  # a file's bytes are (or lead) there
_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?', re.IGNORECASE)
_DISABLED = "Access to this resource is disabled."  # huggingface_hub's DisabledRepoError
_NOT_FOUND = frozenset({"not found", "repo not found", "repository not found"})
_GIVE = "--token, $HF_TOKEN or `hf auth login`"  # where a token comes from (docs/hf.md)


class _Answer(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class Hub:
    """One repository on one Hub, with the token (if any) that goes with it."""

    def __init__(self, endpoint: str, repo: Repo, token: Token | None, settings: Settings) -> None:
        self.endpoint, self.repo, self.token, self.settings = endpoint, repo, token, settings
        prepare_tls(settings, endpoint)
        self.pool = make_pool(settings)

    def close(self) -> None:
        """Close its sockets (before ``download_many`` forks: none may leak into a child)."""
        self.pool.clear()

    # --- what a download asks -----------------------------------------------------------------

    def commit(self, revision: str) -> str:
        """The commit a branch or tag names now."""
        url = f"{self.endpoint}{self.repo.api_path}/revision/{quote(revision, safe='')}"
        doc = self._document(url, revision)
        return check_commit(doc.get("sha") if isinstance(doc, dict) else None, url)

    def files(self, commit: str) -> list[RepoFile]:
        """Every file of ``commit``, from the paged tree listing."""
        url: str | None = (
            f"{self.endpoint}{self.repo.api_path}/tree/{commit}?recursive=true&expand=false"
        )
        files: list[RepoFile] = []
        seen: set[str] = set()
        paths: set[str] = set()
        listed = size = empty = 0
        while url is not None:
            if url in seen:
                raise BadResponse(url, "the tree listing's pages run in a loop")
            seen.add(url)
            answer = self._get(url, commit, {}, limit=MAX_PAGE)
            doc = _json(answer.body, url)
            listed += len(doc) if isinstance(doc, list) else 0
            size += len(answer.body) + len(url)
            _check_bounds(url, listed, size, len(seen))
            page = parse_tree_page(doc, url)
            # A listing that starts over on new URLs is caught at its first repeat, not
            # MAX_PAGES requests (and as many pages held in memory) later.
            for f in page:
                if f.path in paths:
                    raise BadResponse(url, "the tree listing names a path twice")
                paths.add(f.path)
            files += page
            url = self._next_page(url, answer.headers.get("link", ""))
            empty = 0 if isinstance(doc, list) and doc else empty + 1  # folders count
            if url is not None and empty >= MAX_EMPTY:
                raise BadResponse(url, f"the tree listing's pages list nothing, {empty} in a row")
        check_listing(files, f"{self.endpoint}{self.repo.api_path}/tree/{commit}")
        return files

    def check_access(self, commit: str, path: str) -> None:
        """Ask for one byte of ``path`` (its redirect is not followed): a gated or private
        repository, or a file gone, is then one clear error before any download starts."""
        try:
            self._get(self.resolve_url(commit, path), commit, {"Range": "bytes=0-0"}, _REACHED)
        except EntryNotFound as exc:
            raise EntryNotFound(str(self.repo), commit, path, exc.said) from None

    def on_hub(self, url: str) -> bool:
        """Whether ``url`` is on the Hub's own origin (not its storage's)."""
        return same_origin(url, self.endpoint)

    def resolve_url(self, commit: str, path: str) -> str:
        return f"{self.endpoint}{self.repo.url_path}/resolve/{commit}/{quote(path)}"

    def auth_headers(self) -> tuple[tuple[str, str], ...]:
        """The token, for requests to the Hub's own origin."""
        return (("Authorization", f"Bearer {self.token.value}"),) if self.token else ()

    # --- requests -------------------------------------------------------------------------------

    def _next_page(self, url: str, link: str) -> str | None:
        match = _NEXT.search(link)
        if match is None:
            return None
        target: str = urljoin(url, str(match.group(1)))
        if url_problem(target) or not same_origin(target, self.endpoint):
            raise BadResponse(url, "the tree listing's next page is not on the Hub's origin")
        return target

    def _document(self, url: str, revision: str) -> Any:
        return _json(self._get(url, revision, {}).body, url)

    def _get(
        self,
        url: str,
        revision: str,
        extra: dict[str, str],
        ok: frozenset[int] = _OK,
        limit: int = MAX_DOCUMENT,
    ) -> _Answer:
        """GET ``url`` with the retry policy (connection failures, 5xx, 429), following the
        Hub's own redirects (unless a redirect is ``ok``); any answer not ``ok`` becomes our
        error, and one of more than ``limit`` bytes a ``BadResponse``."""
        retry = Retry.from_settings(self.settings)
        while True:
            try:
                answer = self._follow(url, extra, ok, limit)
                if answer.status in ok:
                    return answer
                raise self._error(answer, url, revision)
            except BlobdlError as exc:
                retry = retry.increment(0)
                if not exc.retryable or retry.exhausted:
                    raise
                time.sleep(retry.delay(exc))

    def _follow(self, url: str, extra: dict[str, str], ok: frozenset[int], limit: int) -> _Answer:
        for _hop in range(self.settings.max_redirects + 1):
            answer = self._send(url, extra, limit)
            if answer.status in ok or answer.status not in REDIRECTS:
                return answer
            if "location" not in answer.headers:
                raise BadResponse(url, f"redirect {answer.status} without Location")
            target = urljoin(url, answer.headers["location"])
            if url_problem(target) or not same_origin(target, self.endpoint):
                raise BadResponse(url, "an API redirect away from the Hub's origin")
            url = target
        raise TooManyRedirects(url, self.settings.max_redirects)

    def _send(self, url: str, extra: dict[str, str], limit: int) -> _Answer:
        ours = {"Accept": "application/json", **extra}
        headers = base_headers((*self.settings.headers, *self.auth_headers()), ours.items())
        response = send_get(self.pool, url, headers)
        try:
            if response.status >= 400:  # what the Hub says of it, in its first bytes
                body = error_body(url, response, self.settings.stall_timeout)
            else:
                with translate_errors(url):
                    require_identity(url, response)
                    document = response.status == 200 and "Range" not in extra
                    # whole within the stall timeout of its head, as every small document:
                    # a byte a second, never silent, would hold a read as long as it liked
                    deadline = time.monotonic() + self.settings.stall_timeout
                    body = read_upto(url, response, limit + 1, deadline) if document else b""
        finally:
            response.close()
        if len(body) > limit:
            raise BadResponse(url, f"an API answer of more than {limit} bytes")
        lowered = {k.lower(): v for k, v in response.headers.items()}
        if response.status >= 400 and (after := retry_after(response)) is not None:
            lowered["retry-after"] = str(after)
        return _Answer(response.status, lowered, body)

    def _error(self, answer: _Answer, url: str, revision: str) -> BlobdlError:
        """What the Hub said, in our words (``X-Error-Code`` first, as huggingface_hub reads
        it), with its own words and what the user can do: a token, or another one."""
        code, repo, status = answer.headers.get("x-error-code", ""), str(self.repo), answer.status
        says = self._hub_says(answer, url)
        if code == "RevisionNotFound":
            return RevisionNotFound(repo, revision, says)
        # A bare 404 on a file (a mirror's) is the file missing: the repository was listed.
        bare_file_404 = not code and status == 404 and "/resolve/" in url
        if code == "EntryNotFound" or bare_file_404:
            return EntryNotFound(repo, revision, url.rpartition("/")[2], says)
        if answer.headers.get("x-error-message") == _DISABLED:
            return RepositoryNotFound(repo, "the Hub has disabled access to it")
        if code == "GatedRepo":
            how = f"{self._sent()} has not been granted access" if self.token else (
                f"no token was sent: ask for access on the Hub, then give a token with {_GIVE}"
            )  # fmt: skip
            return GatedRepository(repo, how, says)
        # A 401 without a token is the Hub not saying whether the repository exists.
        if code == "RepoNotFound" or status == 404 or (status == 401 and not self.token):
            return RepositoryNotFound(repo, self._not_found_hint(), _beyond_not_found(says))
        also = f"; {says}" if says else ""
        if status == 401 and self.token:  # one the Hub does not know: revoked, expired, mistyped
            why = f"the Hub refused {self._sent()} for {repo}; {self.token.renew}"
            return AuthRefused(url, why + also)
        if status == 403:
            why = f"{self._sent()} may lack the right to read it" if self.token else (
                f"no token was sent; give one with {_GIVE}"
            )  # fmt: skip
            return AuthRefused(url, f"HTTP 403 for {repo}: {why}{also}")
        after = answer.headers.get("retry-after")
        return HTTPStatusError(status, url, float(after) if after else None, said=says)

    def _sent(self) -> str:
        """The token sent, named by where it came from (never shown)."""
        return f"the token sent (from {self.token.source})" if self.token else "no token"

    def _not_found_hint(self) -> str:
        if self.token:
            return f"it does not exist, or {self._sent()} cannot see it"
        return f"it does not exist, or it is private and no token was sent: give one with {_GIVE}"

    def _hub_says(self, answer: _Answer, url: str) -> str:
        """The Hub's words of a refusal to ``url``: its ``X-Error-Message``, then its body's
        (the JSON ``error``) where they differ, as huggingface_hub reads them; the token,
        the user's headers (but the harmless ones) and ``url``'s secrets masked, should a
        Hub (or a proxy) echo them."""
        given = [v for name, v in self.settings.headers if name.lower() not in CROSS_ORIGIN_SAFE]
        secrets = secrets_of(url, [*given, *(value for _, value in self.auth_headers())])
        header = hidden(answer.headers.get("x-error-message", ""), secrets)
        words = [w for w in (said_in_header(header), said(answer.body, secrets)) if w]
        return f"the Hub says {'; '.join(dict.fromkeys(words))}" if words else ""


def _beyond_not_found(says: str) -> str:
    """``says``, unless it only says "Repository not found" again."""
    return "" if says.lower().removeprefix("the hub says ").strip(" .!") in _NOT_FOUND else says


def _check_bounds(url: str, listed: int, size: int, pages: int) -> None:
    """A tree listing past ``MAX_LISTED`` entries, ``MAX_LISTING`` bytes or ``MAX_PAGES``
    pages ends here: no real one gets there, and a hostile one would take all the memory."""
    past = (
        f"{MAX_LISTED:,} entries" if listed > MAX_LISTED
        else f"{MAX_LISTING:,} bytes" if size > MAX_LISTING
        else f"{MAX_PAGES:,} pages" if pages > MAX_PAGES
        else None
    )  # fmt: skip
    if past is not None:
        raise BadResponse(url, f"the tree listing runs past {past}, more than any repository's")


def _json(body: bytes, where: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadResponse(where, "the Hub's answer is not JSON") from None
