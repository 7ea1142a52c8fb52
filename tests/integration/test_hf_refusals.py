"""When the Hub refuses: a gated repository, a private or missing one, a revision or a file
it lacks, a token it does not know. The stand-in answers as the real Hub does (its
``X-Error-Code``, its ``X-Error-Message`` and the JSON body's ``error``), and the real
huggingface_hub judges that: it must raise the named error it raises against the Hub, with
the Hub's words. Then ``blobdl hf`` must say what the Hub said, of which repository, and
what the user can do (a token, which one was sent), in one line, exit 3, its ``failed``
event, the token never shown, and nothing in the cache that huggingface_hub misreads."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from blobdl.errors import EXIT_NETWORK
from faultserver.hub import HubHandle, HubRepo, start_hub
from tests.conftest import REPO
from tests.hf_client import call, hf_env
from tests.integration.test_hf import FAST

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
        ("gated repository: acme/gated", "the token sent has not been granted access"),
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
        ("repository not found: acme/private", "or the token sent cannot see it"),
    ),
    "no-repo": Case(
        "acme/nosuch", "model", None, "main", "w.bin", "RepositoryNotFoundError", 401,
        "Repository not found",
        ("repository not found: acme/nosuch", "no token was sent"),
    ),
    "revoked-token": Case(
        "acme/open", "model", REVOKED, "main", "w.bin", "HfHubHTTPError", 401,
        "Invalid credentials in Authorization header",
        ("authentication refused: the Hub refused the token sent", "acme/open",
         "Invalid credentials in Authorization header", f"give a valid one with {GIVE}"),
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


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubHandle]:
    repos = [
        HubRepo("acme/gated", gated=True),
        HubRepo("acme/gated-data", type="dataset", gated=True),
        HubRepo("acme/private", private=True),
        HubRepo("acme/open"),
    ]
    for i, repo in enumerate(repos):
        repo.commit({"w.bin": bytes([i]) * 5000, "config.json": b"{}"})
    folder = tmp_path_factory.mktemp("hub")
    handle = start_hub(folder, repos, tokens=(TOKEN,), strangers=(STRANGER,))
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


@pytest.mark.parametrize("case", ["gated", "gated-not-granted"])
def test_a_refused_download_leaves_nothing_huggingface_hub_takes_for_a_snapshot(
    hub: HubHandle, tmp_path: Path, case: str
) -> None:
    """A gated repository lists its files to anyone: the refusal comes at the first file.
    Then huggingface_hub, offline, finds no snapshot at the branch nor at the commit."""
    done = blobdl_hf(hub, tmp_path, CASES[case])
    assert done.returncode == EXIT_NETWORK, done.stderr
    cache = tmp_path / "c"
    assert not [p for p in cache.rglob("*") if p.is_file() and p.parent.name != "trees"
                and p.name != "CACHEDIR.TAG" and p.suffix != ".lock"]  # fmt: skip
    commit = next((cache / "models--acme--gated" / "trees").glob("*.json")).stem
    env = hf_env(hub.url, tmp_path, offline=True)
    for revision in ("main", commit):
        answer = call(env, "snapshot_download", repo_id="acme/gated", revision=revision,
                      cache_dir=str(cache))  # fmt: skip
        assert "error" in answer, (revision, answer)


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
