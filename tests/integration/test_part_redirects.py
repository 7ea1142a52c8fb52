"""A part answered with a redirect goes on at its target, under the probe's rules.

CDNs and S3-style mirrors bounce some requests (a signed URL that now redirects, a mirror
that sends a request elsewhere): the part's GET follows at most ``max_redirects`` hops,
sends a credential to no other origin, and takes from the target only the blob it pinned
(its size, its validators). The mirror is the ``other`` server: another origin serving the
same files, with the same validators.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest

import blobdl
from blobdl import Downloader, Item
from faultserver.serverctl import ServerHandle
from tests.conftest import PART, Blob, fast_settings, sha256_file

Make = Callable[..., Blob]
SECRETS = {"Authorization": "Bearer s3cret-token", "Cookie": "session=s3cret-cookie"}


def fetch(url: str, dest: Path, **overrides: object) -> blobdl.DownloadResult:
    return Downloader(fast_settings(**overrides)).download(url, dest)


def bounce(server: ServerHandle, blob: Blob, location: str, **rule: object) -> None:
    """The probe is answered; the next request for the blob is redirected to ``location``."""
    server.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": 1,
                       "action": "redirect", "location": location, **rule})  # fmt: skip


def seen(handle: ServerHandle) -> str:
    return json.dumps(handle.stats()["headers"]).lower()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_part_redirected_goes_on_at_the_target_with_the_same_bytes(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path, status: int
) -> None:
    blob = make(4 * PART, seed=81)
    other.reset()
    bounce(server, blob, other.url(blob.name), status=status)
    result = fetch(blob.url, tmp_path / "out", connections=2)
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert result.retries == 0  # followed, not failed and retried
    assert other.stats()["per_path"][f"/files/{blob.name}"] >= 1


@pytest.mark.parametrize("given", ["headers", "userinfo"])
def test_a_part_redirected_to_another_origin_carries_no_credential(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path, given: str
) -> None:
    blob = make(2 * PART, seed=82)
    other.reset()
    bounce(server, blob, other.url(blob.name))
    if given == "headers":
        url, headers, secrets = blob.url, tuple(SECRETS.items()), list(SECRETS.values())
    else:
        url, headers = blob.url.replace("http://", "http://alice:pw-of-alice@", 1), ()
        secrets = [_basic("alice", "pw-of-alice")]
    # Small chunks: after the hop, the attempt asks the mirror itself, several times.
    fetch(url, tmp_path / "out", connections=1, headers=headers, min_steal_size=PART // 4)
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert all(s.lower() in seen(server) for s in secrets)  # its own origin has them
    assert other.stats()["per_path"][f"/files/{blob.name}"] >= 2
    mirror = seen(other)
    assert "authorization" not in mirror and "cookie" not in mirror


def test_a_part_redirected_on_its_own_origin_keeps_its_credentials(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(2 * PART, seed=83)
    bounce(server, blob, f"/redirect/1/{blob.name}")
    fetch(blob.url, tmp_path / "out", connections=1, headers=tuple(SECRETS.items()))
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert all(h.get("Authorization") == SECRETS["Authorization"]
               for h in server.stats()["headers"])  # fmt: skip


def test_a_part_redirected_in_a_loop_ends_at_the_redirect_limit_without_retries(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(2 * PART, seed=84)
    bounce(server, blob, f"/files/{blob.name}", times=None)  # to itself, for ever
    with pytest.raises(blobdl.TooManyRedirects, match="more than 3 redirects"):
        fetch(blob.url, tmp_path / "out", connections=1, max_redirects=3, retries=5)
    # The probe, then one part's request and its three hops: no retry of the loop.
    assert server.stats()["per_path"][f"/files/{blob.name}"] == 1 + 4
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "location", ["ftp://127.0.0.1/blob", "file:///etc/passwd", "http://[bad", "http://h:99999/x"]
)
def test_a_part_redirected_where_blobdl_never_goes_fails_at_once_not_retried(
    make: Make, server: ServerHandle, tmp_path: Path, location: str
) -> None:
    """A redirect to a URL blobdl refuses comes again on every retry: the first one ends
    the download, as a redirect loop does, naming where it was sent."""
    blob = make(2 * PART, seed=89)
    bounce(server, blob, location, times=None)
    with pytest.raises(blobdl.BadRedirect, match="redirect to"):
        fetch(blob.url, tmp_path / "out", connections=1, retries=5)
    assert server.stats()["per_path"][f"/files/{blob.name}"] == 1 + 1  # the probe, one part
    assert not (tmp_path / "out").exists()


def test_a_probe_redirected_where_blobdl_never_goes_fails_at_once(
    server: ServerHandle, make: Make, tmp_path: Path
) -> None:
    blob = make(2 * PART, seed=90)
    server.set_faults({"path": f"/files/{blob.name}", "times": None, "action": "redirect",
                       "location": "ftp://127.0.0.1/blob"})  # fmt: skip
    with pytest.raises(blobdl.BadRedirect, match="redirect to 'ftp"):
        fetch(blob.url, tmp_path / "out", retries=5)
    assert server.stats()["per_path"][f"/files/{blob.name}"] == 1


def test_a_part_redirected_through_a_chain_longer_than_the_limit_is_refused(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    blob = make(2 * PART, seed=85)
    bounce(server, blob, f"/redirect/3/{blob.name}")
    with pytest.raises(blobdl.TooManyRedirects):
        fetch(blob.url, tmp_path / "out", connections=1, max_redirects=3)
    assert not (tmp_path / "out").exists()


def test_a_part_redirected_to_another_blob_is_a_changed_remote_never_mixed_bytes(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    blob = make(2 * PART, seed=86)
    same_size = make(2 * PART, seed=87)  # other bytes, other validators
    larger = make(2 * PART + 1, seed=88)
    other.reset()
    for n, elsewhere in enumerate((same_size, larger)):
        bounce(server, blob, other.url(elsewhere.name))
        with pytest.raises(blobdl.RemoteChanged):
            fetch(blob.url, tmp_path / f"out{n}", connections=1)
        assert not (tmp_path / f"out{n}").exists()


@pytest.mark.parametrize("mirror", ["its own validators", "no validators"])
def test_a_part_redirected_to_a_mirror_ignoring_if_match_is_checked_by_its_answer(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path, mirror: str
) -> None:
    """A mirror that does not honour If-Match serves another blob: its validators (or, if
    it sends none, its size) tell it apart, never its bytes."""
    blob = make(2 * PART, seed=93)
    if mirror == "its own validators":
        elsewhere, drop = make(2 * PART, seed=94), []  # the same size, other bytes
    else:
        elsewhere, drop = make(2 * PART + 1, seed=95), ["ETag", "Last-Modified"]
    other.reset()
    other.set_faults({"path": f"/files/{elsewhere.name}", "times": None, "action": "headers",
                      "ignore": ["If-Match"], "drop": drop})  # fmt: skip
    bounce(server, blob, other.url(elsewhere.name))
    with pytest.raises(blobdl.RemoteChanged):
        fetch(blob.url, tmp_path / "out", connections=1)
    assert other.stats()["per_path"][f"/files/{elsewhere.name}"] >= 1
    assert not (tmp_path / "out").exists()


def test_a_whole_body_redirected_goes_on_at_the_target(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    """A server without ranges: its one GET of the whole blob is redirected."""
    blob = make(2 * PART, seed=89)
    other.reset()
    server.set_faults(
        {"path": f"/files/{blob.name}", "times": 1, "action": "ignore_range"},
        {"path": f"/files/{blob.name}", "times": 1, "action": "redirect",
         "location": other.url(blob.name)},
    )  # fmt: skip
    other.set_faults({"path": f"/files/{blob.name}", "times": None, "action": "ignore_range"})
    result = fetch(blob.url, tmp_path / "out")
    assert sha256_file(tmp_path / "out") == blob.sha256 and result.retries == 0


def test_a_whole_body_redirected_to_a_target_that_expired_is_asked_again(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    """A server without ranges bounces its one GET to a signed URL that refuses it once
    (expired): a redirect's target, refreshed as a part's is, not the blob refused."""
    blob = make(2 * PART, seed=97)
    other.reset()
    server.set_faults(
        {"path": f"/files/{blob.name}", "times": 1, "action": "ignore_range"},
        {"path": f"/files/{blob.name}", "times": None, "action": "redirect",
         "location": other.url(blob.name)},
    )  # fmt: skip
    other.set_faults(
        {"path": f"/files/{blob.name}", "times": 1, "action": "status", "status": 403},
        {"path": f"/files/{blob.name}", "times": None, "action": "ignore_range"},
    )
    fetch(blob.url, tmp_path / "out")
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert other.stats()["per_path"][f"/files/{blob.name}"] >= 2


def test_a_small_items_retry_redirected_goes_on_at_the_target(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    """A batch's small item: its first GET (its probe) is cut, its retry redirected."""
    blob = make(PART, seed=90)
    other.reset()
    server.set_faults(
        {"path": f"/files/{blob.name}", "times": 1, "action": "close_after", "bytes": 1000},
        {"path": f"/files/{blob.name}", "times": 1, "action": "redirect",
         "location": other.url(blob.name)},
    )  # fmt: skip
    headers = tuple(SECRETS.items())
    [result] = blobdl.download_many([Item(blob.url, str(tmp_path / "out"))],
                                    settings=fast_settings(headers=headers))  # fmt: skip
    assert result.ok, result
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert other.stats()["ranges"] == [f"bytes=1000-{PART - 1}"]
    assert "s3cret" not in seen(other)


def test_a_small_items_retry_redirected_in_a_loop_ends_at_the_redirect_limit(
    make: Make, server: ServerHandle, tmp_path: Path
) -> None:
    """A batch's small item asks again over its seat's session: the same limit holds."""
    blob = make(PART, seed=96)
    server.set_faults(
        {"path": f"/files/{blob.name}", "times": 1, "action": "close_after", "bytes": 1000},
        {"path": f"/files/{blob.name}", "times": None, "action": "redirect",
         "location": f"/files/{blob.name}"},
    )  # fmt: skip
    settings = fast_settings(max_redirects=3, retries=5)
    [result] = blobdl.download_many([Item(blob.url, str(tmp_path / "out"))], settings=settings)
    assert isinstance(result.error, blobdl.TooManyRedirects), result
    # Its probe, then one request of its retry and its three hops: no retry of the loop.
    assert server.stats()["per_path"][f"/files/{blob.name}"] == 1 + 1 + 3


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_a_part_redirected_to_a_target_that_expired_is_asked_again(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    """The URL the probe pinned redirects each request to a signed one (a fresh signature
    each time): a 403 there is an expired signature, not a final refusal of the blob."""
    blob = make(2 * PART, seed=91)
    other.reset()
    bounce(server, blob, other.url(blob.name), times=None)
    other.set_faults({"path": f"/files/{blob.name}", "times": 1, "action": "status",
                      "status": 403})  # fmt: skip
    fetch(blob.url, tmp_path / "out", connections=1)
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert other.stats()["per_path"][f"/files/{blob.name}"] >= 2


def test_a_redirect_target_that_expires_between_two_requests_of_one_attempt_is_asked_again(
    make: Make, server: ServerHandle, other: ServerHandle, tmp_path: Path
) -> None:
    """The pinned URL is no redirect, but a part's first request is bounced to a signed
    URL; the rest of the attempt asks that URL directly, and its signature expires before
    the attempt's next request: still a redirect's target, not the blob refused."""
    blob = make(PART, seed=92)
    other.reset()
    bounce(server, blob, other.url(blob.name))
    other.set_faults({"path": f"/files/{blob.name}", "skip": 1, "times": 1,
                      "action": "status", "status": 403})  # fmt: skip
    # Small chunks: the attempt asks for its range in several requests.
    fetch(blob.url, tmp_path / "out", connections=1, min_steal_size=PART // 4)
    assert sha256_file(tmp_path / "out") == blob.sha256
    assert other.stats()["per_path"][f"/files/{blob.name}"] == 2  # served once, then 403
