"""A stand-in Hugging Face Hub for ``blobdl hf`` tests and benchmarks: the API subset that
huggingface_hub 2.x and blobdl use, on loopback, with a separate storage origin.

``start_hub(folder, repos)`` starts two real servers:

- the **storage** origin, ``faultserver.server`` serving LFS blobs as ``/files/<sha256>``
  (ranges, ETag, If-Match; every fault rule, per-connection pacing for the benchmarks, and
  the headers of every request in its stats);
- the **Hub** (``python -m faultserver.hub``, this module: the fault server's handler with the
  Hub's routes added, so its rules, stats and header log apply too):

  - ``GET /api/{models,datasets,spaces,kernels}/{repo}/revision/{rev}``: ``{"id", "sha"}``;
  - ``GET /api/.../{repo}/tree/{rev}?recursive=true[&cursor=N]``: the files and folders,
    ``page_size`` a page, the next page in ``Link: <url>; rel="next"``;
  - ``HEAD|GET /[datasets/|spaces/|kernels/]{repo}/resolve/{rev}/{path}``: a git file itself
    (``ETag`` its git sha1, ``X-Repo-Commit``; a branch first answers 307 to
    ``/api/resolve-cache/...``, as the Hub does); an LFS file a 302 to the storage origin
    with ``X-Linked-Etag`` (its sha256), ``X-Linked-Size`` and ``ETag`` (its pointer's sha1);
  - errors as the Hub sends them, its words in ``X-Error-Message`` and the JSON body's
    ``error``: ``RepoNotFound`` (unknown, or private to whoever asks: 401 without a token,
    404 with one), ``GatedRepo`` (a gated repository's files: 401 without a token, 403 to a
    token not granted access), ``RevisionNotFound`` and ``EntryNotFound`` (404, with
    ``X-Repo-Commit``); a token it does not know, 401 ``Invalid credentials in
    Authorization header`` on every request;
  - ``GET /api/agent-harnesses``: 404 (huggingface_hub asks once a day unless telemetry is off);
  - ``GET /_ctl/hub-log``: every request's method, path and Authorization; ``POST /_ctl/hub``:
    a new spec (``HubHandle.publish``).

A repository is built with ``HubRepo.commit(files)``; ``raw`` entries replace a commit's
listing as sent (a hostile Hub); ``moves`` pushes to a branch once a listing was served;
``repeats`` makes the listing start over on a new page, for ever; ``endless`` follows its
files with pages of new ones, for ever (``page_size`` a page, each path new);
``endless_empty`` with pages that list nothing, each naming a next one.
huggingface_hub itself downloads from this stand-in in the tests: if it could not, the tests
would mean nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import ssl
import sys
import threading
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, quote, unquote

from .server import (
    Fault,
    FaultServer,
    Handler,
    Reply,
    file_reply,
    serve,
    simple_reply,
    tls_context,
)
from .serverctl import ServerHandle, start_server

KINDS = {
    "model": ("models", ""),
    "dataset": ("datasets", "datasets/"),
    "space": ("spaces", "spaces/"),
    "kernel": ("kernels", "kernels/"),
}
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.onnx")
POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


# --- building repositories (the tests' and benchmarks' side) ---------------------------------


@dataclass
class HubRepo:
    """A repository the stand-in serves: commits (their files), refs, who may read it."""

    id: str
    type: str = "model"
    private: bool = False
    gated: bool = False
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # sha -> entries
    blobs: dict[str, bytes] = field(default_factory=dict)  # etag -> bytes
    contents: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> path -> bytes
    # Refs that move (to these commits) once a tree listing was served: a push that lands
    # between a client's listing and its downloads.
    moves: dict[str, str] = field(default_factory=dict)
    # A hostile listing: its pages start over, each with a next page, for ever.
    repeats: bool = False
    # A hostile listing: after its files, pages of new files (none named twice), for ever.
    endless: bool = False
    # A hostile listing: after its files, pages that list nothing, each naming a next one.
    endless_empty: bool = False

    def commit(
        self,
        files: dict[str, bytes],
        *,
        branch: str | None = "main",
        lfs: tuple[str, ...] = LFS_PATTERNS,
        xet: tuple[str, ...] = (),
    ) -> str:
        """A new commit holding ``files`` (paths matching ``lfs`` in LFS, those matching
        ``xet`` with a xet hash too); ``branch`` then names it. Returns its sha."""
        sha = hashlib.sha1(f"{self.id}:{len(self.commits)}:{sorted(files)}".encode()).hexdigest()
        entries = [self._entry(path, data, lfs, xet) for path, data in sorted(files.items())]
        folders = {p.rsplit("/", 1)[0] for p in files if "/" in p}
        for folder in sorted({"/".join(f.split("/")[: i + 1]) for f in folders
                              for i in range(f.count("/") + 1)}):  # fmt: skip
            entries.append({"type": "directory", "oid": git_sha1(folder.encode()), "size": 0,
                            "path": folder})  # fmt: skip
        self.commits[sha] = entries
        self.contents[sha] = dict(files)
        if branch is not None:
            self.refs[branch] = sha
        return sha

    def _entry(
        self, path: str, data: bytes, lfs: tuple[str, ...], xet: tuple[str, ...]
    ) -> dict[str, Any]:
        if not any(fnmatchcase(path, p) for p in lfs):
            self.blobs[git_sha1(data)] = data
            return {"type": "file", "oid": git_sha1(data), "size": len(data), "path": path}
        oid = hashlib.sha256(data).hexdigest()
        pointer = POINTER.format(oid=oid, size=len(data)).encode()
        self.blobs[oid] = data
        entry: dict[str, Any] = {
            "type": "file",
            "oid": git_sha1(pointer),
            "size": len(data),
            "path": path,
            "lfs": {"oid": oid, "size": len(data), "pointerSize": len(pointer)},
        }
        if any(fnmatchcase(path, p) for p in xet):
            entry["xetHash"] = hashlib.sha256(b"xet" + data).hexdigest()
        return entry

    def spec(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "private": self.private, "gated": self.gated,
                "refs": self.refs, "commits": self.commits, "moves": self.moves,
                "repeats": self.repeats, "endless": self.endless,
                "endless_empty": self.endless_empty}  # fmt: skip


@dataclass
class HubHandle:
    """The running stand-in: the Hub (``hub``: its fault rules, stats and header log) and
    its storage origin (``storage``)."""

    hub: ServerHandle
    storage: ServerHandle
    tokens: tuple[str, ...]
    page_size: int
    strangers: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        """The endpoint, as ``HF_ENDPOINT`` gives it."""
        return self.hub.base_url

    def publish(self, repos: list[HubRepo]) -> None:
        """Serve ``repos`` from now on (their blobs are written first)."""
        _write_blobs(self.hub.root, repos)
        spec = _spec(repos, self.storage.base_url, self.tokens, self.page_size, self.strangers)
        self.hub._call("/_ctl/hub", spec)

    def log(self) -> list[dict[str, Any]]:
        """Every request so far: ``{"method", "path" (with query), "authorization"}``."""
        entries: list[dict[str, Any]] = self.hub._call("/_ctl/hub-log", None)["log"]
        return entries

    def reset(self) -> None:
        """Fault rules and stats cleared on both servers (the request log stays)."""
        self.hub.reset()
        self.storage.reset()

    def stop(self) -> None:
        self.hub.stop()
        self.storage.stop()


def start_hub(
    folder: Path,
    repos: list[HubRepo],
    *,
    tokens: tuple[str, ...] = (),
    page_size: int = 1000,
    strangers: tuple[str, ...] = (),
    tls: tuple[str, str, str] | None = None,
) -> HubHandle:
    """The storage origin and the Hub, serving ``repos``. ``tokens`` may read every private
    and gated repository; ``strangers`` are tokens it knows whose owners were granted
    nothing; any other token is refused on every request, as the Hub refuses one revoked.
    ``tls``: both over https, with this (certificate chain, key, CA) of a private CA."""
    certfile, keyfile, ca = tls or (None, None, None)
    secure: dict[str, Any] = {"certfile": certfile, "keyfile": keyfile, "ca": ca}
    objects = folder / "objects"
    objects.mkdir(parents=True, exist_ok=True)
    _write_blobs(objects, repos)
    storage = start_server(objects, **secure)
    spec_path = folder / "hub-spec.json"
    spec = _spec(repos, storage.base_url, tokens, page_size, strangers)
    spec_path.write_text(json.dumps(spec))
    try:
        hub = start_server(
            objects, module="faultserver.hub", extra=("--spec", str(spec_path)), **secure
        )
    except BaseException:
        storage.stop()
        raise
    return HubHandle(hub, storage, tokens, page_size, strangers)


def _write_blobs(objects: Path, repos: list[HubRepo]) -> None:
    for repo in repos:
        for etag, data in repo.blobs.items():
            path = objects / etag
            if not path.exists():
                path.write_bytes(data)


def _spec(
    repos: list[HubRepo],
    storage: str,
    tokens: tuple[str, ...],
    page_size: int,
    strangers: tuple[str, ...] = (),
) -> dict[str, Any]:
    return {"storage": storage, "tokens": list(tokens), "strangers": list(strangers),
            "page_size": page_size, "repos": [r.spec() for r in repos]}  # fmt: skip


# --- the server -------------------------------------------------------------------------------


class HubServer(FaultServer):
    def __init__(
        self,
        addr: tuple[str, int],
        root: Path,
        spec: dict[str, Any],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.spec = spec
        self.log: list[dict[str, Any]] = []
        self.log_lock = threading.Lock()
        super().__init__(addr, root, tls)
        self.RequestHandlerClass = HubHandler

    def find(self, kind: str, rest: str) -> tuple[dict[str, Any], str] | None:
        """The repository of type ``kind`` whose id ``rest`` starts with, and what follows."""
        for repo in self.spec["repos"]:
            if repo["type"] == kind and rest.startswith(repo["id"] + "/"):
                return repo, rest[len(repo["id"]) + 1 :]
        return None


class HubHandler(Handler):
    @property
    def hub(self) -> HubServer:
        return cast(HubServer, self.server)

    def do_POST(self) -> None:
        if self.path != "/_ctl/hub":
            super().do_POST()
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.hub.spec = json.loads(body)
        self._control(lambda: {"ok": True})

    def _dispatch(self, head: bool) -> None:
        if self.path == "/_ctl/hub-log":
            with self.hub.log_lock:
                entries = list(self.hub.log)
            self._control(lambda: {"log": entries})
            return
        with self.hub.log_lock:
            self.hub.log.append({"method": self.command, "path": self.path,
                                 "authorization": self.headers.get("Authorization")})  # fmt: skip
        super()._dispatch(head)

    def _route(self, path: str, query: str, req: dict[str, str], fault: Fault | None) -> Reply:
        segments = path.split("/")
        if path == "/api/agent-harnesses":
            return simple_reply(404, "not found\n")
        if self._who() == "revoked":  # the Hub refuses a token it does not know, everywhere
            return _error(401, None, "Invalid credentials in Authorization header")
        if len(segments) > 3 and segments[1] == "api" and segments[2] == "resolve-cache":
            kind = _kind(segments[3])
            found = self.hub.find(kind, "/".join(segments[4:])) if kind else None
            if found is not None:
                return self._resolve(found[0], found[1], req, fault, cached=True)
        if len(segments) > 3 and segments[1] == "api" and _kind(segments[2]):
            found = self.hub.find(cast(str, _kind(segments[2])), "/".join(segments[3:]))
            return self._api(found, query) if found else self._not_found()
        kind, rest = _resolve_kind(path)
        found = self.hub.find(kind, rest)
        if found is not None and found[1].startswith("resolve/"):
            return self._resolve(found[0], found[1][len("resolve/") :], req, fault)
        if "/resolve/" in rest:
            return self._not_found()
        return super()._route(path, query, req, fault)

    # --- the API ------------------------------------------------------------------------------

    def _api(self, found: tuple[dict[str, Any], str], query: str) -> Reply:
        repo, rest = found
        if repo["private"] and self._who() != "granted":
            return self._not_found()
        what, _, rev_and_path = rest.partition("/")
        rev = unquote(rev_and_path.split("/", 1)[0])
        commit = _commit(repo, rev)
        if commit is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        if what == "revision":
            return _json(200, {"id": repo["id"], "sha": commit, "private": repo["private"]})
        if what != "tree":
            return simple_reply(404, "not found\n")
        entries = repo["commits"][commit]
        size = self.hub.spec["page_size"]
        cursor = int(parse_qs(query).get("cursor", ["0"])[0])
        pages = max(1, -(-len(entries) // size))
        at = cursor % pages if repo.get("repeats") else cursor
        empty = bool(repo.get("endless_empty"))
        endless = bool(repo.get("endless")) or empty
        page = (
            ([] if empty else _made_up(cursor, size))
            if endless and cursor >= pages
            else entries[at * size : (at + 1) * size]
        )
        headers = {}
        if (cursor + 1) * size < len(entries) or repo.get("repeats") or endless:
            base = f"http://127.0.0.1:{self.hub.server_port}"
            path = f"/api/{KINDS[repo['type']][0]}/{repo['id']}/tree/{rev_and_path}"
            headers["Link"] = (
                f'<{base}{path}?recursive=true&expand=false&cursor={cursor + 1}>; rel="next"'
            )
        else:
            repo["refs"].update(repo.get("moves", {}))
        return _json(200, page, headers)

    # --- resolve ------------------------------------------------------------------------------

    def _resolve(
        self, repo: dict[str, Any], rest: str, req: dict[str, str], fault: Fault | None,
        cached: bool = False,
    ) -> Reply:  # fmt: skip
        if repo["private"] and self._who() != "granted":
            return self._not_found()
        if repo["gated"] and self._who() != "granted":
            return self._gated(repo)
        raw_rev, _, raw_path = rest.partition("/")
        rev, path = unquote(raw_rev), unquote(raw_path)
        commit = _commit(repo, rev)
        if commit is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        entry = next((e for e in repo["commits"][commit] if e["path"] == path), None)
        if entry is None or entry["type"] != "file":
            return _error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit})
        if "lfs" in entry:
            return self._to_storage(entry, commit)
        if rev != commit and not cached:  # the Hub sends a branch's git files through its cache
            where = (
                f"/api/resolve-cache/{KINDS[repo['type']][0]}/{repo['id']}/{commit}/{quote(path)}"
            )
            return simple_reply(307, "", {"Location": f"{where}?etag={entry['oid']}",
                                          "X-Repo-Commit": commit})  # fmt: skip
        reply = file_reply(self.hub.root / entry["oid"], req, fault, etag=f'"{entry["oid"]}"')
        reply.headers.append(("X-Repo-Commit", commit))
        return reply

    def _to_storage(self, entry: dict[str, Any], commit: str) -> Reply:
        oid = entry["lfs"]["oid"]
        headers = {
            "Location": f"{self.hub.spec['storage']}/files/{oid}?X-Amz-Signature=stand-in",
            "X-Repo-Commit": commit,
            "X-Linked-Etag": f'"{oid}"',
            "X-Linked-Size": str(entry["size"]),
            "ETag": f'"{entry["oid"]}"',
        }
        if "xetHash" in entry:
            headers["X-Xet-Hash"] = entry["xetHash"]
        return simple_reply(302, "", headers)

    # --- who asks, and the Hub's refusals ----------------------------------------------------

    def _who(self) -> str:
        """``anonymous`` (no token), ``granted`` (reads everything), ``stranger`` (a token
        the Hub knows, granted nothing) or ``revoked`` (a token it does not know)."""
        given = self.headers.get("Authorization")
        if given is None:
            return "anonymous"
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and token in self.hub.spec["tokens"]:
            return "granted"
        known = scheme.lower() == "bearer" and token in self.hub.spec.get("strangers", ())
        return "stranger" if known else "revoked"

    def _not_found(self) -> Reply:
        """A repository missing, or private to whoever asks: 401 without a token (the Hub
        will not say which), 404 with one."""
        status = 401 if self._who() == "anonymous" else 404
        return _error(status, "RepoNotFound", "Repository not found")

    def _gated(self, repo: dict[str, Any]) -> Reply:
        """A gated repository's file, to one not granted access: the Hub's very words."""
        what = f"Access to {repo['type']} {repo['id']} is restricted"
        if self._who() == "anonymous":
            words = "You must have access to it and be authenticated to access it. Please log in."
            return _error(401, "GatedRepo", f"{what}. {words}")
        page = f"http://127.0.0.1:{self.hub.server_port}/{KINDS[repo['type']][1]}{repo['id']}"
        words = f"you are not in the authorized list. Visit {page} to ask for access."
        return _error(403, "GatedRepo", f"{what} and {words}")


def _kind(word: str) -> str | None:
    return next((k for k, (plural, _) in KINDS.items() if plural == word), None)


def _resolve_kind(path: str) -> tuple[str, str]:
    for kind, (_, prefix) in KINDS.items():
        if prefix and path.startswith("/" + prefix):
            return kind, path[len(prefix) + 1 :]
    return "model", path[1:]


def _commit(repo: dict[str, Any], rev: str) -> str | None:
    if rev in repo["commits"]:
        return rev
    sha = repo["refs"].get(rev)
    if isinstance(sha, str):
        return sha
    # A short commit (7 hex digits or more) names the one commit it starts, as git reads it.
    named = [c for c in repo["commits"] if 7 <= len(rev) < 40 and c.startswith(rev)]
    return named[0] if len(named) == 1 else None


def _made_up(cursor: int, size: int) -> list[dict[str, Any]]:
    """Page ``cursor`` of an endless listing: ``size`` files no other page names."""
    paths = [f"endless/{cursor:07d}/{i:05d}.txt" for i in range(size)]
    return [{"type": "file", "oid": git_sha1(p.encode()), "size": 1, "path": p} for p in paths]


def _json(status: int, doc: Any, headers: dict[str, str] | None = None) -> Reply:
    return simple_reply(
        status, json.dumps(doc), {"Content-Type": "application/json", **(headers or {})}
    )


def _error(
    status: int, code: str | None, message: str, headers: dict[str, str] | None = None
) -> Reply:
    """A refusal as the Hub sends it: ``X-Error-Code`` (if it has one), ``X-Error-Message``,
    and the message again as the JSON body's ``error``."""
    extra = {"X-Error-Message": message, **(headers or {})}
    if code is not None:
        extra["X-Error-Code"] = code
    return _json(status, {"error": message}, extra)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m faultserver.hub", description=__doc__)
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--port", default=0, type=int)
    p.add_argument("--spec", required=True, type=Path)
    p.add_argument("--certfile")
    p.add_argument("--keyfile")
    args = p.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    tls = tls_context(args.certfile, args.keyfile)
    server = HubServer(("127.0.0.1", args.port), args.root.resolve(), spec, tls)
    return serve(server)


if __name__ == "__main__":
    sys.exit(main())
