"""`make demo`: serve a generated 1 GiB blob on loopback and download it with blobdl.

The download runs as a real `python -m blobdl` child attached to this terminal, so the
progress bar is the one users see. Afterwards the file is checked with sha256.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from benchmarks.direct import go_direct
from benchmarks.remote import sha256_of
from faultserver.serverctl import make_blob, start_server

SIZE = 1 << 30  # 1 GiB
DATA = Path("demo-data")


def main() -> int:
    go_direct()  # no tool behind a proxy from the environment (benchmarks.direct)
    served = DATA / "served"
    served.mkdir(parents=True, exist_ok=True)
    blob = served / "demo.bin"
    if not blob.exists() or blob.stat().st_size != SIZE:
        print(f"generating a {SIZE >> 20} MiB blob in {served} ...", flush=True)
        expected = make_blob(served, "demo.bin", SIZE, seed=1)
    else:
        expected = sha256_of(blob)
    out = DATA / "downloaded.bin"
    out.unlink(missing_ok=True)
    with start_server(served) as server:
        url = server.url("demo.bin")
        print(f"server: {url}\n$ python -m blobdl {url} -o {out}", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", "blobdl", url, "-o", str(out)])
        elapsed = time.monotonic() - started
    if code != 0:
        print(f"demo: blobdl exited {code}", file=sys.stderr)
        return code
    actual = sha256_of(out)
    ok = actual == expected
    print(f"sha256 {actual} {'matches' if ok else 'DOES NOT MATCH ' + expected}")
    print(f"{SIZE / elapsed / 1e6:.0f} MB/s end to end ({elapsed:.2f} s, process start included)")
    out.unlink()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
