"""When the Hub refuses: a gated repository, a private or missing one, a revision or a file
it lacks, a token it does not know. The stand-in answers as the real Hub does (its
``X-Error-Code``, its ``X-Error-Message`` and the JSON body's ``error``), and the real
huggingface_hub judges that: it must raise the named error it raises against the Hub, with
the Hub's words. Then ``blobdl hf`` must say what the Hub said, of which repository, and
what the user can do (a token, which one was sent), in one line, exit 3, its ``failed``
event, the token never shown, and nothing in the cache that huggingface_hub misreads."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from blobdl.errors import EXIT_INTERRUPTED, EXIT_NETWORK
from faultserver.hub import HubHandle, HubRepo, git_sha1, start_hub
from tests.conftest import REPO
from tests.hf_client import call, calls, hf_env
from tests.integration.test_hf import FAST, tree
from tests.integration.test_stops_as_files_are_made import AFTER
from tests.integration.test_trust_stops import wait_for

TOKEN = "hf_granted_c0ffee"  # its owner may read every private and gated repository
STRANGER = "hf_stranger_beef"  # a token the Hub knows, whose owner was granted nothing
REVOKED = "hf_revoked_f00d"  # a token the Hub does not know (revoked, mistyped)
SECRETS = (TOKEN, STRANGER, REVOKED)
GIVE = "--token, $HF_TOKEN or `hf auth login`"  # where a token comes from
ASK = f"ask for access on the Hub, then give a token with {GIVE}"


class Case(NamedTuple):
    repo: str
    repo_type: str
    token: str | None
    revision: str
    path: str
    raised: str  # what huggingface_hub raises against the Hub
    status: int
    hub_says: str  # the Hub's X-Error-Message ({hub}: its endpoint)
    blobdl_says: tuple[str, ...]  # the start of blobdl's line, then what it holds
    # Whose answer blobdl reads: a file the listing lacks is missing before any request for it.
    told_by: str = "the Hub"


CASES = {
    "gated": Case(
        "acme/gated", "model", None, "main", "w.bin", "GatedRepoError", 401,
        "Access to model acme/gated is restricted. You must have access to it and be "
        "authenticated to access it. Please log in.",
        ("gated repository: acme/gated", f"no token was sent: {ASK}"),
    ),
    "gated-dataset": Case(
        "acme/gated-data", "dataset", None, "main", "w.bin", "GatedRepoError", 401,
        "Access to dataset acme/gated-data is restricted. You must have access to it and be "
        "authenticated to access it. Please log in.",
        ("gated repository: dataset acme/gated-data", f"no token was sent: {ASK}"),
    ),
    "gated-not-granted": Case(
        "acme/gated", "model", STRANGER, "main", "w.bin", "GatedRepoError", 403,
        "Access to model acme/gated is restricted and you are not in the authorized list. "
        "Visit {hub}/acme/gated to ask for access.",
        ("gated repository: acme/gated",
         "the token sent (from $HF_TOKEN) has not been granted access"),
    ),
    "private": Case(
        "acme/private", "model", None, "main", "w.bin", "RepositoryNotFoundError", 401,
        "Repository not found",
        ("repository not found: acme/private",
         f"it does not exist, or it is private and no token was sent: give one with {GIVE}"),
    ),
    "private-not-granted": Case(
        "acme/private", "model", STRANGER, "main", "w.bin", "RepositoryNotFoundError", 404,
        "Repository not found",
        ("repository not found: acme/private", "or the token sent (from $HF_TOKEN) cannot see it"),
    ),
    "no-repo": Case(
        "acme/nosuch", "model", None, "main", "w.bin", "RepositoryNotFoundError", 401,
        "Repository not found",
        ("repository not found: acme/nosuch", "no token was sent"),
    ),
    "revoked-token": Case(
        "acme/open", "model", REVOKED, "main", "w.bin", "HfHubHTTPError", 401,
        "Invalid credentials in Authorization header",
        ("authentication refused: the Hub refused the token sent (from $HF_TOKEN)", "acme/open",
         "Invalid credentials in Authorization header", "set a valid one in $HF_TOKEN"),
    ),
    "no-revision": Case(
        "acme/open", "model", None, "nope", "w.bin", "RevisionNotFoundError", 404,
        "Invalid rev id: nope",
        ("revision not found: acme/open has no revision 'nope'", "the Hub says Invalid rev id"),
    ),
    "no-file": Case(
        "acme/open", "model", None, "main", "nope.bin", "RemoteEntryNotFoundError", 404,
        "Entry not found",
        ("file not found: acme/open has no 'nope.bin' at revision 'main'",),
        told_by="the listing",
    ),
}  # fmt: skip


REPOS = [
    HubRepo("acme/gated", gated=True),
    HubRepo("acme/gated-data", type="dataset", gated=True),
    HubRepo("acme/private", private=True),
    HubRepo("acme/open"),
]
for _i, _repo in enumerate(REPOS):
    _repo.commit({"w.bin": bytes([_i]) * 5000, "config.json": b"{}"})
COMMIT = {r.id: r.refs["main"] for r in REPOS}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubHandle]:
    folder = tmp_path_factory.mktemp("hub")
    handle = start_hub(folder, REPOS, tokens=(TOKEN,), strangers=(STRANGER,))
    yield handle
    handle.stop()


@pytest.fixture(autouse=True)
def _fresh(hub: HubHandle) -> None:
    hub.reset()


def blobdl_hf(
    hub: HubHandle, home: Path, case: Case, *more: str
) -> subprocess.CompletedProcess[str]:
    env = hf_env(hub.url, home)
    if case.token is not None:
        env["HF_TOKEN"] = case.token
    wanted = () if case.path == "w.bin" else (case.path,)
    args = (case.repo, *wanted, "--repo-type", case.repo_type, "--revision", case.revision)
    return subprocess.run(
        [sys.executable, "-m", "blobdl", "hf", *args, "--cache-dir", str(home / "c"), *FAST,
         *more],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=env,
    )  # fmt: skip


def _shown_nowhere(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_stand_in_refuses_as_the_hub_does_by_huggingface_hubs_reading(
    hub: HubHandle, tmp_path: Path, case: Case
) -> None:
    """huggingface_hub's ``hf_raise_for_status`` reads the stand-in's answer as the Hub's."""
    answer = call(
        hf_env(hub.url, tmp_path), "hf_hub_download", repo_id=case.repo,
        repo_type=case.repo_type, filenames=[case.path], revision=case.revision,
        token=case.token if case.token is not None else False, cache_dir=str(tmp_path / "c"),
    )  # fmt: skip
    assert answer.get("error") == case.raised, answer
    message = answer["message"]
    assert f"{case.status}" in message.splitlines()[0], message  # its first line says it
    # (its own words first: the Hub's are left out where they only repeat them)
    assert case.hub_says.format(hub=hub.url).lower() in message.lower(), message


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_hub_refusal_is_one_line_saying_what_the_hub_said_and_what_to_do(
    hub: HubHandle, tmp_path: Path, case: Case
) -> None:
    done = blobdl_hf(hub, tmp_path, case)
    assert done.returncode == EXIT_NETWORK, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    first, *held = case.blobdl_says
    assert line.startswith(f"blobdl: error: {first}"), line
    for words in held:
        assert words in line, line
    if case.told_by == "the Hub":
        assert case.hub_says.format(hub=hub.url).lower() in line.lower(), line
    _shown_nowhere(done.stdout + done.stderr)


@pytest.mark.parametrize("case", ["gated", "revoked-token", "no-file"])
def test_a_hub_refusal_ends_in_one_failed_event_with_its_exit_code(
    hub: HubHandle, tmp_path: Path, case: str
) -> None:
    done = blobdl_hf(hub, tmp_path, CASES[case], "--json")
    assert done.returncode == EXIT_NETWORK, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    failed = [e for e in events if e.get("event") == "failed"]
    assert len(failed) == 1 and failed[0]["exit_code"] == EXIT_NETWORK, events
    assert done.stderr.strip() == f"blobdl: error: {failed[0]['error']}"
    _shown_nowhere(done.stdout + done.stderr)


def test_a_hub_that_echoes_the_token_in_its_words_never_gets_it_shown_nor_escapes(
    hub: HubHandle, tmp_path: Path
) -> None:
    hub.hub.set_faults(
        {"path": "/api/models/acme/open/revision/main", "action": "status", "status": 401,
         "headers": {"X-Error-Message": f"Invalid credentials: Bearer {REVOKED}\x1b]0;t\x07"},
         "body": json.dumps({"error": f"token {REVOKED} is not valid"}), "times": None}
    )  # fmt: skip
    done = blobdl_hf(hub, tmp_path, CASES["revoked-token"])
    assert done.returncode == EXIT_NETWORK, done.stderr
    assert "Invalid credentials: Bearer ***\\x1b]0;t\\x07; token *** is not valid" in done.stderr
    assert "\x1b" not in done.stderr  # the Hub's words are a server's text: escaped
    _shown_nowhere(done.stdout + done.stderr)


@pytest.mark.parametrize(
    ("code", "says"),
    [("EntryNotFound", "(the Hub says Entry not found)"), (None, "")],
    ids=["entry-not-found", "bare-404"],
)
def test_a_listed_file_the_hub_then_lacks_is_named_with_what_the_hub_says(
    hub: HubHandle, tmp_path: Path, code: str | None, says: str
) -> None:
    """The listing names it, its ``resolve`` answers 404: what the Hub says of it, if any."""
    headers = {"X-Error-Message": "Entry not found"} | ({"X-Error-Code": code} if code else {})
    hub.hub.set_faults(
        {"path": "/acme/open/resolve/*", "action": "status", "status": 404,
         "headers": headers if code else {}, "times": None}
    )  # fmt: skip
    done = blobdl_hf(hub, tmp_path, CASES["no-file"]._replace(path="config.json"))
    assert done.returncode == EXIT_NETWORK, done.stderr
    line = done.stderr.strip()
    assert line.startswith("blobdl: error: file not found: acme/open has no 'config.json'"), line
    assert line.endswith(f" {says}" if says else "'"), line  # no words where it said none


# --- what a refused or failed run leaves ------------------------------------------------------

# The Hub's answers to a file's GET once the listing and the access check have passed (the
# token revoked, or the access withdrawn, meanwhile): as it answers those refusals.
MIDWAY = {
    "revoked-midway": (401, {"X-Error-Message": "Invalid credentials in Authorization header"}),
    "gated-midway": (403, {"X-Error-Code": "GatedRepo", "X-Error-Message":
                           "Access to model acme/open is restricted and you are not in the "
                           "authorized list. Visit {hub}/acme/open to ask for access."}),
    "gone-midway": (404, {"X-Error-Code": "RepoNotFound",
                          "X-Error-Message": "Repository not found"}),
}  # fmt: skip


def refuse_files(hub: HubHandle, repo: str, how: str, path: str = "*", skip: int = 1) -> None:
    """Every GET of ``repo``'s ``path`` (``*``: any file) at its commit but the first
    ``skip`` (the access check's) refused."""
    status, headers = MIDWAY[how]
    headers = {k: v.format(hub=hub.url) for k, v in headers.items()}
    body = json.dumps({"error": headers["X-Error-Message"]})
    hub.hub.set_faults(
        {"path": f"/{repo}/resolve/{COMMIT[repo]}/{path}", "action": "status", "status": status,
         "headers": headers, "body": body, "skip": skip, "times": None}
    )  # fmt: skip


def judged(hub: HubHandle, home: Path, repo: str, cache: Path) -> dict[str, Any]:
    """What the real huggingface_hub, offline, makes of ``cache``: ``hf cache ls`` (its
    ``scan_cache_dir``), ``w.bin`` and ``config.json`` by file and the snapshot, at the branch
    and at the commit."""
    env = hf_env(hub.url, home, offline=True)
    where = {"repo_id": repo, "cache_dir": str(cache)}
    asked: dict[str, tuple[str, dict[str, Any]]] = {
        "scan": ("scan_cache_dir", {"cache_dir": str(cache)})
    }
    for revision in ("main", COMMIT[repo]):
        for name in ("w.bin", "config.json"):
            files = {"filenames": [name], "revision": revision, **where}
            asked[f"{name}@{revision[:4]}"] = ("hf_hub_download", files)
        asked[f"snapshot@{revision[:4]}"] = ("snapshot_download", {"revision": revision, **where})
    answers = dict(zip(asked, calls(env, list(asked.values())), strict=True))
    scan = answers.pop("scan")
    seen: dict[str, Any] = {"scan": scan.get("error", scan)}
    seen |= {key: got.get("error", "found") for key, got in answers.items()}
    return seen


NOTHING = {f"{what}@{rev}": "LocalEntryNotFoundError"
           for what in ("w.bin", "config.json", "snapshot")
           for rev in ("main", "0000")}  # fmt: skip


def _beside_locks(cache: Path) -> list[str]:
    """What ``cache`` holds but huggingface_hub's lock files, which no one removes (removing
    a lock file races its next taker), the folders that hold them, and the cache's tag
    beside them."""
    found = tree(cache)
    locks = any(name.startswith(".locks/") for name in found)
    return [name for name in found if not name.startswith(".locks")
            and not (locks and name == "CACHEDIR.TAG")]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "midway"),
    [("gated", None), ("gated-not-granted", None), ("revoked-token", None),
     ("private", None), ("no-revision", None), ("no-file", None),
     ("open", "revoked-midway"), ("open", "gated-midway"), ("open", "gone-midway")],
    ids=["gated", "gated-not-granted", "revoked-token", "private", "no-revision", "no-file",
         "revoked-midway", "gated-midway", "gone-midway"],
)  # fmt: skip
def test_a_refused_run_leaves_nothing_it_made(
    hub: HubHandle, tmp_path: Path, case: str, midway: str | None
) -> None:
    """A gated repository lists its files to anyone, so the refusal comes at the first file,
    after the listing; a token revoked meanwhile refuses the downloads themselves. A run
    that wrote no file leaves no folder, no tree record, no empty snapshot: ``hf cache ls``
    shows nothing, and huggingface_hub, offline, finds nothing rather than an incomplete
    snapshot."""
    if midway is not None:
        refuse_files(hub, "acme/open", midway)
        known = Case("acme/open", "model", TOKEN, "main", "w.bin", "", 0, "", ())
    else:
        known = CASES[case]
    done = blobdl_hf(hub, tmp_path, known)
    assert done.returncode == EXIT_NETWORK, done.stderr
    cache = tmp_path / "c"
    seen = judged(hub, tmp_path, known.repo, cache)
    assert seen.pop("scan") in ("CacheNotFound", {"repos": {}, "warnings": []}), seen
    commit = COMMIT[known.repo]
    assert seen == {k.replace("0000", commit[:4]): v for k, v in NOTHING.items()}, seen
    assert not cache.exists() or _beside_locks(cache) == [], tree(cache)
    if midway is None:  # refused before any download: not even a lock file
        assert not cache.exists(), tree(cache)


@pytest.mark.parametrize("by", ["blobdl", "huggingface_hub"])
def test_what_an_earlier_run_left_stays_as_it_was_after_a_refused_run(
    hub: HubHandle, tmp_path: Path, by: str
) -> None:
    """A snapshot of the commit that already holds a file (its ref, its tree record), made by
    blobdl or by huggingface_hub with a granted token, is left exactly as it was when a run
    without access is refused the rest: the refused run removes only what it made."""
    cache = tmp_path / "c"
    granted = CASES["gated"]._replace(token=TOKEN, path="config.json")
    if by == "blobdl":
        assert blobdl_hf(hub, tmp_path, granted).returncode == 0
    else:
        env = hf_env(hub.url, tmp_path)
        got = call(env, "snapshot_download", repo_id="acme/gated", allow_patterns=["config.json"],
                   token=TOKEN, cache_dir=str(cache))  # fmt: skip
        assert "path" in got, got
    before, judged_before = tree(cache), judged(hub, tmp_path, "acme/gated", cache)
    commit = COMMIT["acme/gated"]
    files = {"refs": ["main"], "files": ["config.json"]}
    assert judged_before["scan"] == {"repos": {"model acme/gated": {commit: files}},
                                     "warnings": []}  # fmt: skip
    assert judged_before["config.json@main"] == "found", judged_before
    done = blobdl_hf(hub, tmp_path, CASES["gated"])
    assert done.returncode == EXIT_NETWORK, done.stderr
    assert tree(cache) == before
    assert judged(hub, tmp_path, "acme/gated", cache) == judged_before


def test_a_run_refused_partway_keeps_its_files_and_the_next_run_completes_them(
    hub: HubHandle, tmp_path: Path
) -> None:
    """``config.json`` comes down, then ``w.bin`` is refused (the token revoked meanwhile):
    the file that came down is kept and linked into the snapshot, whose tree record says it
    is incomplete (no ref names it: the run did not finish). huggingface_hub, offline, reads
    that file and refuses the snapshot as incomplete; the next run fetches only the rest."""
    # (the access check asks for config.json, the first file listed)
    refuse_files(hub, "acme/open", "revoked-midway", path="w.bin", skip=0)
    granted = CASES["no-file"]._replace(token=TOKEN, path="w.bin")
    done = blobdl_hf(hub, tmp_path, granted)
    assert done.returncode == EXIT_NETWORK, done.stderr
    cache = tmp_path / "c"
    commit = COMMIT["acme/open"]
    seen = judged(hub, tmp_path, "acme/open", cache)
    files = {"refs": [], "files": ["config.json"]}
    assert seen.pop("scan") == {"repos": {"model acme/open": {commit: files}}, "warnings": []}
    assert seen[f"config.json@{commit[:4]}"] == "found", seen
    assert seen[f"w.bin@{commit[:4]}"] == "LocalEntryNotFoundError", seen
    assert seen[f"snapshot@{commit[:4]}"] != "found", seen  # never taken as complete
    hub.reset()
    done = blobdl_hf(hub, tmp_path, granted, "--json")
    assert done.returncode == 0, done.stderr
    started = next(json.loads(x) for x in done.stdout.splitlines() if "hf_started" in x)
    assert started["missing"] == 1, started
    seen = judged(hub, tmp_path, "acme/open", cache)
    files = {"refs": ["main"], "files": ["config.json", "w.bin"]}
    assert seen.pop("scan") == {"repos": {"model acme/open": {commit: files}}, "warnings": []}
    assert set(seen.values()) == {"found"}, seen


@pytest.mark.parametrize("held", [None, {"notes.txt": b"mine"}], ids=["new", "of-mine"])
@pytest.mark.parametrize("midway", [None, "revoked-midway"], ids=["at-check", "midway"])
def test_a_refused_local_dir_run_leaves_the_folder_as_it_was(
    hub: HubHandle, tmp_path: Path, held: dict[str, bytes] | None, midway: str | None
) -> None:
    """No ``.cache/huggingface/`` left in a folder of the user's (nor the folder, if the run
    made it) by a run that put no file there: no tree record, no metadata, no partial;
    refused midway, the lock files a download takes, which no one removes (removing a lock
    file races its next taker)."""
    ld = tmp_path / "ld"
    for name, data in (held or {}).items():
        ld.mkdir(exist_ok=True)
        (ld / name).write_bytes(data)
    before = tree(ld) if ld.exists() else None
    case = CASES["gated"]
    if midway is not None:
        refuse_files(hub, "acme/open", midway)
        case = Case("acme/open", "model", TOKEN, "main", "w.bin", "", 0, "", ())
    env = hf_env(hub.url, tmp_path)
    if case.token is not None:
        env["HF_TOKEN"] = case.token
    done = subprocess.run(
        [sys.executable, "-m", "blobdl", "hf", case.repo, "--local-dir", str(ld), *FAST],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=env,
    )  # fmt: skip
    assert done.returncode == EXIT_NETWORK, done.stderr
    after = tree(ld) if ld.exists() else None
    if midway is not None:  # the files' lock files stay (huggingface_hub's too), kept out
        assert after is not None  # of git and backups by the tag and .gitignore beside them
        meta = ".cache/huggingface"
        kept = {".cache", meta, f"{meta}/.gitignore", f"{meta}/CACHEDIR.TAG", f"{meta}/download",
                f"{meta}/download/w.bin.lock", f"{meta}/download/config.json.lock"}  # fmt: skip
        assert set(after) - set(before or {}) <= kept, after
        after = {name: seen for name, seen in after.items() if name not in kept}
    assert after == (before if before is not None or midway is None else {})


@pytest.mark.parametrize("how", MIDWAY.keys())
def test_a_refusal_of_the_downloads_reads_as_the_same_refusal_of_the_listing(
    hub: HubHandle, tmp_path: Path, how: str
) -> None:
    """The token revoked (or the access withdrawn) once the listing passed: the file's GET
    gets the Hub's refusal, which is said in the Hub's words with what to do, as the same
    answer to the listing is, not as any server's HTTP error."""
    granted = Case("acme/open", "model", TOKEN, "main", "w.bin", "", 0, "", ())
    status, headers = MIDWAY[how]
    headers = {k: v.format(hub=hub.url) for k, v in headers.items()}
    hub.hub.set_faults(
        {"path": "/api/models/acme/open/revision/main", "action": "status", "status": status,
         "headers": headers, "body": json.dumps({"error": headers["X-Error-Message"]}),
         "times": None}
    )  # fmt: skip
    at_listing = blobdl_hf(hub, tmp_path / "a", granted)
    hub.reset()
    refuse_files(hub, "acme/open", how)
    midway = blobdl_hf(hub, tmp_path / "b", granted)
    lines = []
    for done in (at_listing, midway):
        assert done.returncode == EXIT_NETWORK, done.stderr
        # (once the files are listed, a line says what is to come, as for any run)
        line, *more = [x for x in done.stderr.splitlines() if x.startswith("blobdl: error:")]
        assert not more, done.stderr
        lines.append(re.sub(r" \(http://[^ ]*\)$", "", line))  # the URL refused, if named
    assert lines[1] == lines[0]
    assert headers["X-Error-Message"] in lines[1] or how == "gone-midway", lines[1]
    _shown_nowhere(midway.stdout + midway.stderr)


# Where the token sent came from, how the line names it, and what it says to do there.
SOURCES = {
    "flag": ("--token", "give a valid one with --token"),
    "HF_TOKEN": ("$HF_TOKEN", "set a valid one in $HF_TOKEN"),
    "legacy": ("$HUGGING_FACE_HUB_TOKEN", "set a valid one in $HUGGING_FACE_HUB_TOKEN"),
    "file": ("the token file {home}/token", "log in again with `hf auth login`"),
    "moved-file": ("the token file {home}/elsewhere", "log in again with `hf auth login`"),
}
NAMES = ("--token", "$HF_TOKEN", "$HUGGING_FACE_HUB_TOKEN", "token file", "hf auth login")


@pytest.mark.parametrize("source", SOURCES.keys())
@pytest.mark.parametrize("case", ["revoked-token", "gated-not-granted", "private-not-granted"])
def test_a_refused_token_is_named_by_where_it_came_from_never_shown(
    hub: HubHandle, tmp_path: Path, source: str, case: str
) -> None:
    """The line names the one place the token sent came from (the flag, a variable, the
    token file), not every place a token may come from: a token from ``$HF_TOKEN`` is not
    replaced by ``hf auth login``, which ``$HF_TOKEN`` outranks."""
    known = CASES[case]
    env = hf_env(hub.url, tmp_path)
    more: tuple[str, ...] = ()
    if source == "flag":
        more = ("--token", known.token or "")
    elif source == "HF_TOKEN":
        env["HF_TOKEN"] = known.token or ""
    elif source == "legacy":
        env["HUGGING_FACE_HUB_TOKEN"] = known.token or ""
    else:
        name = "token" if source == "file" else "elsewhere"
        (tmp_path / name).write_text(f"{known.token}\n")
        if source == "moved-file":
            env["HF_TOKEN_PATH"] = str(tmp_path / name)
    done = subprocess.run(
        [sys.executable, "-m", "blobdl", "hf", known.repo, "--cache-dir", str(tmp_path / "c"),
         *FAST, *more],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=env,
    )  # fmt: skip
    assert done.returncode == EXIT_NETWORK, done.stderr
    line = done.stderr.strip()
    named, renew = (text.format(home=tmp_path) for text in SOURCES[source])
    assert f"the token sent (from {named})" in line, line
    if case == "revoked-token":
        assert renew in line, line
    others = [n for n in NAMES if n not in named and n not in renew]
    assert not [n for n in others if n in line], line
    _shown_nowhere(done.stdout + done.stderr)


def test_a_run_stopped_as_it_tells_its_start_leaves_nothing_it_made(
    hub: HubHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller's callback raises on ``HfStarted`` (as a Ctrl-C landing in it does), once
    the tree record and the snapshot's folders are made and before any file is fetched: the
    run takes them away as any failed run does, and no empty revision is left."""
    from blobdl import HfStarted, hf_download

    class Stopped(Exception):
        pass

    def stop(event: object) -> None:
        if isinstance(event, HfStarted):
            raise Stopped

    for offline in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # the caller's, if set
        monkeypatch.delenv(offline, raising=False)
    cache = tmp_path / "c"
    with pytest.raises(Stopped):
        hf_download("acme/open", cache_dir=cache, endpoint=hub.url, token="", on_event=stop)
    assert not cache.exists(), tree(cache)


def _held(path: Path) -> int:
    """An exclusive flock on ``path`` (made if need be), as another run's claim holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _started(hub: HubHandle, home: Path, where: list[str]) -> subprocess.Popen[str]:
    """``blobdl hf acme/open`` into ``where``, once it has said it started (its folders and
    tree record made or found), and now waits for the files' claims."""
    run = subprocess.Popen(
        [sys.executable, "-m", "blobdl", "hf", "acme/open", *where, *FAST, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env=hf_env(hub.url, home),
    )  # fmt: skip
    assert run.stdout is not None
    for line in run.stdout:
        if '"hf_started"' in line:
            return run
    run.wait(timeout=60)
    raise AssertionError(run.stderr.read() if run.stderr else run.returncode)


@pytest.mark.parametrize("kind", ["cache", "local-dir"])
def test_a_stopped_run_takes_away_nothing_a_run_beside_it_uses(
    hub: HubHandle, tmp_path: Path, kind: str
) -> None:
    """Two runs fetch one commit into one folder (they take turns on each file, on
    huggingface_hub's locks). The first made the folders and the tree record; it is stopped
    (Ctrl-C, a job's time limit) before it fetched a file, while the second, which found
    them made, waits for its turn. The second must still complete into a whole snapshot,
    with its tree record (offline runs read the commit's files from it), not have its
    folders removed under it by the first's clean-up."""
    folder = tmp_path / ("c" if kind == "cache" else "ld")
    where = ["--cache-dir" if kind == "cache" else "--local-dir", str(folder)]
    files = {f: next(r for r in REPOS if r.id == "acme/open").contents[COMMIT["acme/open"]][f]
             for f in ("w.bin", "config.json")}  # fmt: skip
    if kind == "cache":
        etags = [
            sha256(b).hexdigest() if n.endswith(".bin") else git_sha1(b) for n, b in files.items()
        ]
        locks = [folder / ".locks/models--acme--open" / f"{etag}.lock" for etag in etags]
    else:  # (the bookkeeping's download/ is then not the first run's to remove)
        locks = [folder / ".cache/huggingface/download" / f"{name}.lock" for name in files]
    held = [_held(lock) for lock in locks]  # a third run's turn, that neither may take yet
    try:
        first = _started(hub, tmp_path, where)
        second = _started(hub, tmp_path, where)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == EXIT_INTERRUPTED
    finally:
        for fd in held:
            os.close(fd)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    _offline_run_completes(hub, tmp_path, where)


@pytest.mark.parametrize("second", [False, True], ids=["one signal", "a second in the clean-up"])
def test_a_second_signal_as_a_stopped_run_takes_its_things_away_changes_nothing_left(
    hub: HubHandle, tmp_path: Path, second: bool
) -> None:
    """A SIGTERM lands as the run has made its folders (before any file); a second one as
    the clean-up starts must not cut it short: what is left is what one signal leaves,
    nothing of what the run made."""
    env = hf_env(hub.url, tmp_path)
    cache = tmp_path / "c"
    then = "blobdl.hf._disk:Made._undo" if second else ""
    done = subprocess.run(
        [sys.executable, "-c", AFTER, "blobdl.hf._disk:Made.hold", str(int(signal.SIGTERM)), "",
         then, "hf", "acme/open", "--cache-dir", str(cache), *FAST],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=env,
    )  # fmt: skip
    assert done.returncode == EXIT_INTERRUPTED, done.stderr
    assert not cache.exists() or _beside_locks(cache) == [], tree(cache)


def _waits_for_a_flock(pid: int) -> bool:
    """Whether process ``pid`` waits for a ``flock`` (``/proc/locks``: its ``->`` lines)."""
    with open("/proc/locks") as locks:
        return any("->" in line and line.split()[5] == str(pid) for line in locks)


def test_a_run_that_waited_for_a_clean_up_holds_the_folder_made_again(
    hub: HubHandle, tmp_path: Path
) -> None:
    """A run waits for its hold on the repository's folder while a stopped run takes the
    folder away (the test plays that run: an exclusive flock, then the folder removed). A
    third run makes the folder again meanwhile. The waiting run must hold the folder that
    is there, not the one removed: else the third, stopped in its turn, finds itself alone
    and takes away what the waiting run relies on (its blobs/, its tree record)."""
    folder = tmp_path / "c"
    where = ["--cache-dir", str(folder)]
    repo = folder / "models--acme--open"
    files = next(r for r in REPOS if r.id == "acme/open").contents[COMMIT["acme/open"]]
    etags = [sha256(files["w.bin"]).hexdigest(), git_sha1(files["config.json"])]
    held = [_held(folder / ".locks/models--acme--open" / f"{etag}.lock") for etag in etags]
    repo.mkdir(parents=True)
    cleaning = os.open(repo, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(cleaning, fcntl.LOCK_EX)  # as a stopped run's clean-up holds it
    try:
        waiting = subprocess.Popen(
            [sys.executable, "-m", "blobdl", "hf", "acme/open", *where, *FAST, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            env=hf_env(hub.url, tmp_path),
        )  # fmt: skip
        wait_for(lambda: _waits_for_a_flock(waiting.pid), "the run's hold on the folder")
        shutil.rmtree(repo)  # the clean-up's work
        third = _started(hub, tmp_path, where)
    finally:
        os.close(cleaning)
    try:
        assert waiting.stdout is not None
        assert any('"hf_started"' in line for line in waiting.stdout), waiting.stderr
        third.send_signal(signal.SIGTERM)
        assert third.wait(timeout=60) == EXIT_INTERRUPTED
    finally:
        for fd in held:
            os.close(fd)
    _, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    _offline_run_completes(hub, tmp_path, where)


def _offline_run_completes(hub: HubHandle, tmp_path: Path, where: list[str]) -> None:
    """A run with the Hub out of reach finds every file of ``acme/open`` in place."""
    offline = subprocess.run(
        [sys.executable, "-m", "blobdl", "hf", "acme/open", *where, *FAST],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env=hf_env(hub.url, tmp_path, offline=True),
    )  # fmt: skip
    assert offline.returncode == 0, offline.stderr
