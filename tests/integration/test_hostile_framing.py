"""A hostile server's framing (the class of the chunk size ``-1``): answers whose body is
delimited every way, right and wrong, on the probe and on the parts.

Each example scripts the first few requests, in the order they come, with a framing from
``tests/strategies.py`` (the fault server's ``framing`` action renders it over the range
each request asks, so one script fits any request): chunked with random splits, its size
lines in every form the grammar allows (case, leading zeros, extensions, white space, a bare
LF), or corrupted (a size line that is no hex number, a size off either way, a chunk's data
not ended by CRLF, no last chunk, trailers past a head's bound, a Content-Length beside
it, bytes after it); Content-Length right, off, doubled or a list; a body ended by the
close; Content-Range shifted or of another total. A server with ranges answers 206, one
without them 200 of the whole blob. A lie that nothing but a digest can tell (a short
200 read as the blob, another total told alike on every answer) comes with one.

The property, as ``test_hostile.py``'s: exit 0 with the exact bytes (sha256) at the
destination, or one ``blobdl: error:`` line, exit 2-5, and nothing at the destination's
name; and an example whose every answer is framed as the grammar allows ends in exit 0.
``BLOBDL_FRAMING_EXAMPLES=N`` searches longer, with random seeds.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from faultserver.serverctl import ServerHandle
from tests.conftest import Blob
from tests.integration.test_hostile import check_invariant, run_cli_tagged
from tests.strategies import framing_catalogue, framings

Make = Callable[..., Blob]

EXAMPLES = int(os.environ.get("BLOBDL_FRAMING_EXAMPLES", "16"))
DEEP = "BLOBDL_FRAMING_EXAMPLES" in os.environ
SIZES = (0, 1, 1000, 2 * 16_384 + 7)
PART = 16_384
CLI = ["-q", "--min-part-size", str(PART), "--max-part-size", str(PART), "--retries", "2",
       "--max-backoff", "0.01", "--stall-timeout", "1"]  # fmt: skip
SEARCH = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not DEEP,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
    phases=list(Phase) if DEEP else [Phase.explicit, Phase.generate],
)


@st.composite
def scripts(draw: st.DrawFn, size: int) -> dict:
    """Framings for the first 1-4 requests, in order; a server without ranges (``whole``)
    answers every later request with a plain 200 too."""
    whole, digest = draw(st.booleans()), draw(st.booleans())
    steps = draw(st.lists(framings(min(size, PART), whole, digest), min_size=1, max_size=4))
    rules = [{"path": "/files/*", "times": 1, "action": "framing", "spec": f.spec,
              "whole": whole} for f in steps]  # fmt: skip
    if whole:
        rules.append({"path": "/files/*", "times": None, "action": "framing", "spec": {},
                      "whole": True})  # fmt: skip
    readable = all(f.readable for f in steps)
    return {"rules": rules, "digest": digest, "readable": readable}


@SEARCH
@given(data=st.data())
def test_a_body_framed_any_way_is_read_exactly_or_refused(
    server: ServerHandle, make: Make, tmp_path: Path, data: st.DataObject
) -> None:
    size = data.draw(st.sampled_from(SIZES), label="size")
    download_framed(server, make(size, seed=2100), data, tmp_path)


def download_framed(
    server: ServerHandle, blob: Blob, data: st.DataObject, tmp_path: Path, *trust: str
) -> None:
    """One example: a script drawn for ``blob`` on ``server``, the CLI run (``trust``: its
    TLS arguments), the property checked."""
    server.reset()
    case = data.draw(scripts(blob.size), label="script")
    sandbox = Path(tempfile.mkdtemp(prefix="case-", dir=tmp_path))
    work = sandbox / "work"
    work.mkdir()
    server.set_faults(*case["rules"])
    args = [blob.url, "-o", str(work / "out.bin"), *CLI, *trust,
            "--connections", str(data.draw(st.integers(1, 2), label="connections"))]  # fmt: skip
    if case["digest"]:
        args += ["--digest", f"sha256:{blob.sha256}"]
    run = run_cli_tagged(args, work)
    try:
        check_invariant(run, blob, sandbox, work, work / "out.bin")
        if case["readable"]:
            assert run.code == 0, f"framing the grammar allows refused: {run.stderr}"
    finally:
        server.reset()


SWEEP = [
    pytest.param(spec, whole, id=f"{name}-{'the whole body' if whole else 'a range'}")
    for name, spec in framing_catalogue().items()
    for whole in (False, True)
]  # fmt: skip


@pytest.mark.parametrize(("spec", "whole"), SWEEP)
def test_each_corrupted_framing_of_a_part_is_refused_or_read_exactly(
    server: ServerHandle, make: Make, tmp_path: Path, spec: dict[str, object], whole: bool
) -> None:
    """The catalogue ``framings`` draws from, each on the answer after the probe (a part of
    the only part, or the whole-body GET), once: what a short derandomized search may miss.
    A short 200 is a lie only a digest tells: the whole body runs with one."""
    sweep_one(server, make(1000, seed=2101), spec, whole, tmp_path)


def sweep_one(
    server: ServerHandle, blob: Blob, spec: dict[str, object], whole: bool, tmp_path: Path,
    *trust: str,
) -> None:  # fmt: skip
    """One framing of the catalogue on the answer after the probe (``trust``: the CLI's TLS
    arguments), the property checked."""
    if whole:
        server.set_faults({"path": "/files/*", "times": 1, "action": "framing", "spec": {},
                           "whole": True},
                          {"path": "/files/*", "times": 1, "action": "framing", "spec": spec,
                           "whole": True},
                          {"path": "/files/*", "times": None, "action": "framing", "spec": {},
                           "whole": True})  # fmt: skip
    else:
        server.set_faults({"path": "/files/*", "skip": 1, "times": 1, "action": "framing",
                           "spec": spec})  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    args = [blob.url, "-o", str(work / "out.bin"), *CLI, *trust, "--connections", "1"]
    if whole:
        args += ["--digest", f"sha256:{blob.sha256}"]
    check_invariant(run_cli_tagged(args, work), blob, tmp_path, work, work / "out.bin")
