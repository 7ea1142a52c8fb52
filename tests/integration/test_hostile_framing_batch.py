"""The framing property (``test_hostile_framing.py``) for a batch's small items and over TLS.

A batch (``blobdl -i MANIFEST``) of small items (none larger than one request: each is
fetched whole by its first GET, on a seat of the batch's pool, over a connection kept alive
from the seat's previous item), several items framed differently in one manifest, plain
items among them: each item ends exact (sha256) at its path, or failed alone, with one
``FAILED`` line naming it and nothing at its path; the batch exits 0 if none failed, 2-5
if one did, with no other line but warnings. An item whose every answer is framed as the
grammar allows ends exact. The same over TLS, for a batch and for a single download.

The catalogue is swept in one manifest per origin (every corruption on an item of its
own); the search draws manifests of 2-6 items, derandomized unless
``BLOBDL_FRAMING_EXAMPLES`` is set.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from faultserver.serverctl import ServerHandle, make_blob
from tests.conftest import Blob, sha256_file
from tests.integration.conftest import PKI
from tests.integration.test_hostile import (
    CLASS_NAME,
    KEEP_SUFFIXES,
    Run,
    files_under,
    run_cli_tagged,
)
from tests.integration.test_hostile_framing import (
    CLI,
    PART,
    SEARCH,
    SIZES,
    SWEEP,
    download_framed,
    scripts,
    sweep_one,
)
from tests.strategies import framing_catalogue

Rule = dict[str, object]
SMALL_SIZES = (0, 1, 1000, PART)  # each no larger than one request: a small item


class Origin:
    """A fault server and what a client needs to trust it (``ca``: the CLI's arguments)."""

    def __init__(self, handle: ServerHandle, ca: list[str]) -> None:
        self.handle, self.ca = handle, ca

    def blob(self, size: int, seed: int) -> Blob:
        name = f"framed-{size}-{seed}.bin"
        if not (self.handle.root / name).exists():
            make_blob(self.handle.root, name, size, seed)
        return Blob(name, size, sha256_file(self.handle.root / name), self.handle.url(name))


@pytest.fixture(params=["http", "https"])
def origin(request: pytest.FixtureRequest, server: ServerHandle) -> Origin:
    if request.param == "http":
        return Origin(server, [])
    pki: PKI = request.getfixturevalue("pki")
    return Origin(request.getfixturevalue("tls_server"), ["--ca-bundle", pki.ca_pem])


def on(blob: Blob, rules: list[dict[str, object]]) -> list[dict[str, object]]:
    """``rules`` written for ``/files/*``, for this blob's path only."""
    return [{**r, "path": f"/files/{blob.name}"} for r in rules]


class Entry:
    """An item of a manifest: its blob, its path (relative to the working directory),
    whether it is given a digest, and whether its every answer is the grammar's."""

    def __init__(self, blob: Blob, path: str, digest: bool, readable: bool) -> None:
        self.blob, self.path, self.digest, self.readable = blob, path, digest, readable

    def line(self) -> str:
        return f"{self.blob.url} {self.path}" + (
            f" sha256:{self.blob.sha256}" if self.digest else ""
        )


def run_batch(origin: Origin, entries: list[Entry], tmp_path: Path, connections: int) -> None:
    sandbox = Path(tempfile.mkdtemp(prefix="batch-", dir=tmp_path))
    work = sandbox / "work"
    work.mkdir()
    manifest = sandbox / "manifest.txt"
    manifest.write_text("".join(e.line() + "\n" for e in entries))
    args = ["-i", str(manifest), *CLI, *origin.ca, "--connections", str(connections),
            "--per-host", str(connections)]  # fmt: skip
    check_batch(run_cli_tagged(args, work), entries, sandbox, work)


def check_batch(run: Run, entries: list[Entry], sandbox: Path, work: Path) -> None:
    """Every item exact at its path, or failed alone: one FAILED line, nothing at its path."""
    assert run.code is not None, f"hang: no exit; stderr={run.stderr!r}"
    assert not run.leftovers, f"processes left behind: {run.leftovers}"
    assert "Traceback" not in run.stderr, run.stderr
    outside = [f for f in files_under(sandbox) if not f.startswith("work") and f != "manifest.txt"]
    assert not outside, f"written outside the working directory: {outside}"
    lines = run.stderr.strip().splitlines()
    failed = [ln for ln in lines if ln.startswith("FAILED  ")]
    noise = [ln for ln in lines if not ln.startswith(("FAILED  ", "blobdl: warning:"))]
    assert not noise, f"exit {run.code}, lines besides the FAILED ones:\n{run.stderr}"
    assert not any(CLASS_NAME.search(ln) for ln in failed), f"a class name: {failed}"
    names = files_under(work)
    for line, e in enumerate(entries, 1):  # the manifest's lines: one per entry
        named = f"FAILED  manifest line {line}: {e.blob.url}: "
        said = [ln for ln in failed if ln.startswith(named)]
        assert len(said) <= 1, f"{e.path} failed more than once: {said}"
        if not said:
            assert e.path in names, f"{e.path} neither written nor failed:\n{run.stderr}"
            got = sha256_file(work / e.path)
            assert got == e.blob.sha256, f"{e.path} not failed, with wrong bytes ({e.blob.size})"
        else:
            assert not e.readable, f"{e.path} framed as the grammar allows, refused: {said[0]}"
            assert e.path not in names, f"{e.path} failed but written: {said[0]}"
    known = {e.path for e in entries}
    strays = [n for n in names if n not in known and not n.endswith(KEEP_SUFFIXES)]
    assert not strays, f"files no item names: {strays}"
    assert len(failed) == sum(1 for ln in failed if any(e.blob.url in ln for e in entries))
    assert (run.code == 0) == (not failed), f"exit {run.code} with {len(failed)} FAILED"
    assert run.code == 0 or 2 <= run.code <= 5, f"exit {run.code}"


@st.composite
def entries(
    draw: st.DrawFn, origin: Origin, seed: int
) -> tuple[list[Entry], list[dict[str, object]]]:
    """2-6 small items, each framed by a script of its own (``scripts``) or plain."""
    chosen, rules = [], []
    for n in range(draw(st.integers(2, 6), label="items")):
        size = draw(st.sampled_from(SMALL_SIZES))
        blob = origin.blob(size, seed + n)
        if draw(st.integers(0, 3)) == 0:  # a plain item: its connection is kept alive
            chosen.append(Entry(blob, f"o{n}.bin", False, True))
            continue
        case = draw(scripts(size))
        keep = draw(st.booleans())  # the framed answers' connections kept open for the next
        rules += on(blob, [{**r, "keep": keep} for r in case["rules"]])
        chosen.append(Entry(blob, f"o{n}.bin", case["digest"], case["readable"]))
    return chosen, rules


@SEARCH
@given(data=st.data())
def test_a_batch_of_small_items_framed_any_way_ends_each_exact_or_failed_alone(
    origin: Origin, tmp_path: Path, data: st.DataObject
) -> None:
    origin.handle.reset()
    chosen, rules = data.draw(entries(origin, 2200), label="items")
    origin.handle.set_faults(*rules)
    try:
        run_batch(origin, chosen, tmp_path, data.draw(st.integers(1, 2), label="connections"))
    finally:
        origin.handle.reset()


# Kept open after every answer, the framings that leave a client waiting for more cost it
# its stall timeout on each attempt: 10 s more for little (kept once covers the class).
@pytest.mark.parametrize(
    ("every", "keep"),
    [(False, False), (False, True), (True, False)],
    ids=["once", "once, its connection kept", "on every answer"],
)
def test_each_corrupted_framing_of_a_small_item_fails_it_alone(
    origin: Origin, tmp_path: Path, every: bool, keep: bool
) -> None:
    """The catalogue in one manifest: each corruption on the first GET of an item of its
    own (a range, or the whole body from a server without ranges, with a digest), a plain
    item after each, on kept-alive connections. Once: the retry is answered plainly; on
    every answer: nothing but the corrupted framing, so the item is read exactly or fails."""
    chosen, rules = [], []
    for n, (spec, whole) in enumerate(
        (spec, whole) for spec in framing_catalogue().values() for whole in (False, True)
    ):
        blob = origin.blob(1000, 2300 + n)
        rules.append({"path": f"/files/{blob.name}", "times": None if every else 1,
                      "action": "framing", "spec": spec, "whole": whole, "keep": keep})  # fmt: skip
        if whole and not every:
            rules.append({"path": f"/files/{blob.name}", "times": None, "action": "framing",
                          "spec": {}, "whole": True})  # fmt: skip
        chosen.append(Entry(blob, f"o{n}.bin", whole, False))
        chosen.append(Entry(origin.blob(PART, 2500 + n), f"p{n}.bin", False, True))
    origin.handle.reset()
    origin.handle.set_faults(*rules)
    try:
        run_batch(origin, chosen, tmp_path, 2)
        stats = origin.handle.stats()
        if keep:  # the seats' connections were kept from one item to the next
            assert stats["connections"] < stats["requests"], stats
    finally:
        origin.handle.reset()


@SEARCH
@given(data=st.data())
def test_a_body_framed_any_way_over_tls_is_read_exactly_or_refused(
    tls_server: ServerHandle, pki: PKI, tmp_path: Path, data: st.DataObject
) -> None:
    """``test_hostile_framing``'s property, for a single download (probe, then parts)
    over TLS."""
    origin = Origin(tls_server, ["--ca-bundle", pki.ca_pem])
    size = data.draw(st.sampled_from(SIZES), label="size")
    download_framed(tls_server, origin.blob(size, 2600), data, tmp_path, *origin.ca)


@pytest.mark.parametrize(("spec", "whole"), SWEEP)
def test_each_corrupted_framing_of_a_part_over_tls_is_refused_or_read_exactly(
    tls_server: ServerHandle, pki: PKI, tmp_path: Path, spec: dict[str, object], whole: bool
) -> None:
    """``test_hostile_framing``'s sweep of the catalogue, over TLS."""
    origin = Origin(tls_server, ["--ca-bundle", pki.ca_pem])
    tls_server.reset()
    try:
        sweep_one(tls_server, origin.blob(1000, 2601), spec, whole, tmp_path, *origin.ca)
    finally:
        tls_server.reset()
