"""Every single hostile fault from tests/strategies.py on its own, on the probe (skip=0)
and on the first part (skip=1): a quick, exhaustive survey beside the random property.

    .venv/bin/python -m tests.hostile_sweep [SUBSTRING]   # only faults whose JSON has it

Prints one FAIL line per broken case; takes a minute or two (a hang costs RUN_TIMEOUT).
"""

# ruff: noqa: E501, E741
import json
import sys
import tempfile
from pathlib import Path

from faultserver.serverctl import make_blob, start_server
from tests.conftest import Blob
from tests.integration.test_hostile import (
    HOLD,
    check_invariant,
    cli_args,
    no_secret_at,
    run_cli_tagged,
)
from tests.strategies import (
    HOSTILE_HEADER_VALUES,
    HOSTILE_STATUSES,
    INTERIM_RUNS,
    RETRY_AFTERS,
    TRANSFER_CODINGS,
    hostile_filenames,
)

root = Path(tempfile.mkdtemp())
base = Path(tempfile.mkdtemp())
srv = start_server(root)
oth = start_server(root)
sha = make_blob(root, "b.bin", 40000, 1)
blob = Blob("b.bin", 40000, sha, srv.url("b.bin"))
here, there = f"127.0.0.1:{srv.port}", f"localhost:{oth.port}"
F = []
for a in ["reset_after", "close_after"]:
    for n in [0, 1, 100]:
        F.append({"action": a, "bytes": n})
F.append({"action": "stall_after", "bytes": 10, "hold": HOLD})
F.append({"action": "no_response", "hold": HOLD})
for a in ["full_200", "ignore_range", "no_length"]:
    F.append({"action": a})
for by in [-1, 1, 5000]:
    F.append({"action": "wrong_content_range", "by": by})
for by in [1, -5000]:
    F.append({"action": "shift_range", "by": by, "_digest": True})
for c in HOSTILE_STATUSES:
    F.append({"action": "status", "status": c, "headers": {}})
for r in RETRY_AFTERS:
    F.append({"action": "status", "status": 503, "headers": {"Retry-After": r}})
for v in ['"other"', 'W/"weak"', "bare"]:
    F.append({"action": "etag", "value": v})
vals = {
    **HOSTILE_HEADER_VALUES,
    "Content-Length": ["garbage", "-1", str(2**63), str(10**30), "1, 2", "", "0", "39999"],
}
for v in TRANSFER_CODINGS:
    for chunked in (True, False):
        F.append({"action": "transfer_encoding", "value": v, "chunked": chunked})
for run in INTERIM_RUNS:
    F.append({"action": "interim", "statuses": list(run)})
for k, vs in vals.items():
    for v in vs:
        F.append({"action": "headers", "set": {k: v}, "_digest": k == "Content-Length"})
for d in ["Content-Range", "ETag", "Last-Modified", "Accept-Ranges", "Content-Length"]:
    F.append({"action": "headers", "drop": [d], "_digest": d == "Content-Length"})
cd = [
    {"action": "headers", "set": {"Content-Disposition": v}, "_anon": True}
    for v in hostile_filenames(str(base))
]
F += cd
locs = [
    f"http://{there}/files/b.bin",
    "/redirect/2/b.bin",
    "../files/b.bin",
    "b.bin",
    f"http://{here}/redirect-abs/3/b.bin",
    f"http://{there}\\@{here}/files/b.bin",
    f"http://other:1\\@{here}/files/b.bin",
    f"http://user:pass@{here}/files/b.bin",
    "http://[::1",
    "ht tp://x",
    "//",
    "http://",
    ":::",
    "http://127.0.0.1:99999/x",
    "http://127.0.0.1:0/x",
    "ftp://127.0.0.1/x",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "\x7f",
    "",
    "/files/" + "a" * 10000,
]
for l in locs:
    for endless in (False, True):
        F.append({"action": "redirect", "location": l, "endless": endless, "hold": 30})
only = sys.argv[1] if len(sys.argv) > 1 else None
for f in F:
    if only and only not in json.dumps(f):
        continue
    for skip in (0, 1):
        f2 = {k: v for k, v in f.items() if not k.startswith("_")}
        rule = {"path": "/*", "skip": skip, "times": 1, **f2}
        srv.reset()
        oth.reset()
        srv.set_faults(rule)
        sb = Path(tempfile.mkdtemp(dir=base))
        work = sb / "work"
        work.mkdir()
        named = not f.get("_anon")
        case = {
            "blob": blob,
            "url": blob.url,
            "connections": 2,
            "named": named,
            "digest": bool(f.get("_digest")),
        }
        args = cli_args(case, work)
        r = run_cli_tagged(args, work)
        try:
            check_invariant(r, blob, sb, work, work / "out.bin" if named else None)
            no_secret_at(oth)
        except AssertionError as e:
            msg = str(e).strip().splitlines()
            print(
                f"FAIL skip={skip} {json.dumps(f2)[:160]}\n    -> exit {r.code}: {msg[0][:150]} | {msg[-1][:200]}",
                flush=True,
            )
srv.stop()
oth.stop()
