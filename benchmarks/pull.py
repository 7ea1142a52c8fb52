"""The ``pull`` scenario: ``blobdl pull`` of a model against a plain ``blobdl`` download of
its one big layer, from the same registry storage, in the same run.

    python -m benchmarks.pull [--size 256MiB] [--repeat 3] [--workdir DIR] [--s3]

Starts Debian's ``docker-registry`` (filesystem storage; ``--s3`` puts it on a local moto S3
with redirects to presigned URLs) on loopback, pushes a model whose model layer is ``--size``
bytes, then runs each ``--repeat`` times, taking turns at going first:

- ``python -m blobdl pull http://HOST/library/bench:v1 --models-dir D`` into an empty store;
- ``python -m blobdl URL -o OUT --digest sha256:...`` of the same layer, where URL is where
  the registry serves it (the presigned storage URL with ``--s3``).

Both are real child processes timed from spawn to exit (interpreter start, the manifest
request, the digest check and fsync included). The goal, from issue #10: the pull's median
wall time is at most 1.05 x the plain download's. Prints both medians and the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

# The registry fixtures are a tool of the project's tests: they start real servers.
from faultserver.registry import (
    CONFIG_TYPE,
    MANIFEST_TYPE,
    MODEL_TYPES,
    Registry,
    start_registry,
    start_s3,
)

from .direct import go_direct

GOAL = 1.05
UNITS = {"": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
REPO, TAG = "library/bench", "v1"


def main(argv: list[str] | None = None) -> int:
    go_direct()  # no tool behind a proxy from the environment (benchmarks.direct)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pull", description=__doc__)
    parser.add_argument("--size", default="256MiB", help="the model layer (default 256MiB)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--workdir", help="where the stores go (default: /dev/shm or /tmp)")
    parser.add_argument("--s3", action="store_true", help="S3 storage (moto) with redirects")
    args = parser.parse_args(argv)
    size = _size(args.size)
    with tempfile.TemporaryDirectory(dir=_workdir(args, size)) as work:
        times = _compare(Path(work), size, args.repeat, args.s3)
    pull, plain = statistics.median(times["pull"]), statistics.median(times["plain"])
    ratio = pull / plain
    verdict = "meets" if ratio <= GOAL else "MISSES"
    print(f"median of {args.repeat}: pull {pull:.2f} s ({size / pull / 1e6:.0f} MB/s), "
          f"plain download {plain:.2f} s ({size / plain / 1e6:.0f} MB/s)")  # fmt: skip
    print(f"pull / plain = {ratio:.3f} ({verdict} the goal <= {GOAL})")
    return 0


def measure(
    size: int, repeat: int, work: Path, s3: bool = False, warm_up: bool = False
) -> tuple[list[float], list[float]]:
    """Wall times of ``repeat`` plain downloads of a ``size`` byte layer and of as many pulls
    of its model (for ``benchmarks.many``): (plain, pull). ``warm_up``: one pair is run
    first and not counted."""
    times = _compare(work, size, repeat, s3, warm_up)
    return times["plain"], times["pull"]


def limited(size: int, repeat: int, work: Path, limit: int) -> list[float]:
    """Seconds from the first layer's ``started`` event to the last one's ``finished``, per
    ``blobdl pull --limit-rate LIMIT --json`` of a model whose layer is ``size`` bytes."""
    spans = []
    with _registry(work / "registry-limited", False) as registry:
        _push(registry, size)
        ref = f"http://{registry.host}/{REPO}:{TAG}"
        for run in range(repeat):
            store = work / f"limited-{run}"
            os.sync()
            args = ["pull", ref, "--models-dir", str(store), "--limit-rate", str(limit), "--json"]
            spans.append(_span([sys.executable, "-m", "blobdl", *args]))
            shutil.rmtree(store)
            print(f"limited pull {run + 1}: {spans[-1]:.2f} s", flush=True)
    return spans


def _span(command: list[str]) -> float:
    """Run a ``--json`` blobdl; the seconds from its first ``started`` event to its last
    ``finished`` one, stamped as the lines arrive."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = last = None
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.monotonic()
        with contextlib.suppress(ValueError):
            event = json.loads(line).get("event")
            if event == "started" and first is None:
                first = now
            elif event == "finished":
                last = now
    if proc.wait() != 0 or first is None or last is None:
        stderr = proc.stderr.read() if proc.stderr else ""
        raise SystemExit(f"blobdl {' '.join(command)} failed: {stderr[-500:]}")
    return last - first


def _compare(
    work: Path, size: int, repeat: int, s3: bool, warm_up: bool = False
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"pull": [], "plain": []}
    with _registry(work / "registry", s3) as registry:
        print(f"pushing a {size} byte layer to {registry.url} ...", flush=True)
        layer = _push(registry, size)
        ref = f"http://{registry.host}/{REPO}:{TAG}"
        for run in range(-1 if warm_up else 0, repeat):
            url = _blob_url(registry.url, layer)
            out = work / f"plain-{run}.bin"
            commands = {
                "pull": ["pull", ref, "--models-dir", str(work / f"store-{run}")],
                "plain": [url, "-o", str(out), "--digest", layer],
            }
            order = ["pull", "plain"] if run % 2 == 0 else ["plain", "pull"]
            for name in order:  # taking turns: neither always runs on a warmer machine
                times[name].append(_timed(commands[name]))
            shutil.rmtree(work / f"store-{run}")
            out.unlink()
            said = f"pull {times['pull'][-1]:.2f} s, plain {times['plain'][-1]:.2f} s"
            if run < 0:  # checked like the others (a failed run stops all), not counted
                print(f"warm-up: {said} (not counted)", flush=True)
                del times["pull"][-1], times["plain"][-1]
            else:
                print(f"run {run + 1}: {said}", flush=True)
    return times


def _push(registry: Registry, size: int) -> str:
    """A model with Ollama's media types: a config, the ``size`` byte layer, a template."""
    config = json.dumps({"model_format": "gguf", "bench": size}).encode()
    blobs = [(CONFIG_TYPE, config), (MODEL_TYPES[0], os.urandom(size)),
             (MODEL_TYPES[1], b"{{ .Prompt }}")]  # fmt: skip
    entries = [
        {"mediaType": kind, "digest": registry.push_blob(REPO, data), "size": len(data)}
        for kind, data in blobs
    ]
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": entries[0],
                "layers": entries[1:]}  # fmt: skip
    registry.push_manifest(REPO, TAG, json.dumps(manifest).encode())
    return str(entries[1]["digest"])


def _workdir(args: argparse.Namespace, size: int) -> str | None:
    if args.workdir:
        return str(args.workdir)
    shm = Path("/dev/shm")
    # two copies of the layer at most: the registry's and one download's
    if shm.is_dir() and shutil.disk_usage(shm).free > 3 * size:
        return str(shm)
    return None


def _size(text: str) -> int:
    """``256MiB``, ``1GiB``, ``4096``: binary units only."""
    match = re.fullmatch(r"(\d+)\s*([KMG]iB)?", text.strip(), re.IGNORECASE)
    if match is None:
        raise SystemExit(f"--size: {text!r} is not a size like 256MiB")
    return int(match.group(1)) * UNITS[(match.group(2) or "").lower()]


@contextlib.contextmanager
def _registry(folder: Path, s3: bool) -> Iterator[Registry]:
    if not s3:
        handle = start_registry(folder)
        try:
            yield handle
        finally:
            handle.stop()
        return
    store = start_s3(folder / "moto")
    try:
        store.create_bucket("registry")
        handle = start_registry(folder / "registry", s3=store.driver("registry"))
        try:
            yield handle
        finally:
            handle.stop()
    finally:
        store.stop()


def _blob_url(base: str, digest: str) -> str:
    """Where the registry serves the blob: its own URL, or the presigned one it redirects to."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    url = f"{base}/v2/{REPO}/blobs/{digest}"
    try:
        with opener.open(urllib.request.Request(url, method="HEAD"), timeout=30):
            return url
    except urllib.error.HTTPError as exc:
        if exc.code in (301, 302, 303, 307, 308) and exc.headers.get("Location"):
            return urllib.parse.urljoin(url, exc.headers["Location"])
        raise


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _timed(args: list[str]) -> float:
    os.sync()  # the other run's dirty pages are not written back during this one
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "blobdl", *args, "--quiet"], capture_output=True)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"blobdl {' '.join(args)} exited {done.returncode}: {done.stderr!r}")
    return elapsed


if __name__ == "__main__":
    sys.exit(main())
