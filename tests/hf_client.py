"""The real huggingface_hub, as the judge of ``blobdl hf``: run in its own process (it
imports httpx2 and starts threads; the test process forks), one call per run, or a list
of calls run one after the other (``calls``).

    python -m tests.hf_client '{"call": "snapshot_download", "kwargs": {...}}'

Prints one JSON line per call, the last lines printed: ``{"path": ...}`` (or
``{"paths": [...]}`` for ``hf_hub_download`` over several files; ``{"repos": ...,
"warnings": ...}`` for ``scan_cache_dir``, what ``hf cache ls`` shows), or ``{"error":
<exception class>, "message": ...}``. The environment (``HF_ENDPOINT``, ``HF_HOME``,
``HF_HUB_OFFLINE``...) is the caller's; see ``hf_env``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OURS = ("HF_", "HUGGING", "TRANSFORMERS_OFFLINE")  # what huggingface_hub (and blobdl hf) read


def hf_env(endpoint: str, home: Path, *, offline: bool = False) -> dict[str, str]:
    """An environment for huggingface_hub against the stand-in: plain HTTP (no xet), no
    telemetry request, its home (token file, caches) in the test's folder, offline only if
    asked (a ``TRANSFORMERS_OFFLINE`` of the caller's would put both clients offline)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OURS)}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
    )
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def call(env: dict[str, str], name: str, **kwargs: Any) -> dict[str, Any]:
    """huggingface_hub's ``name(**kwargs)`` in a child process; its JSON answer."""
    return calls(env, [(name, kwargs)])[0]


def calls(env: dict[str, str], requests: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each ``(name, kwargs)`` as ``call`` makes it, one after the other in one child
    process (one interpreter importing huggingface_hub, not one per call: the judge of a
    cache asks it several questions); their JSON answers, in order. For calls that only
    read (offline), whose answers cannot depend on sharing a process."""
    request = json.dumps([{"call": name, "kwargs": kwargs} for name, kwargs in requests])
    done = subprocess.run(
        [sys.executable, "-m", "tests.hf_client", request],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )
    lines = done.stdout.strip().splitlines()
    ok = done.returncode == 0 and len(lines) >= len(requests)
    assert ok, f"hf_client failed: {done.stderr[-3000:]}"
    return [json.loads(line) for line in lines[-len(requests) :]]


def main() -> int:
    requests = json.loads(sys.argv[1])
    for request in requests if isinstance(requests, list) else [requests]:
        print(json.dumps(_answer(request)), flush=True)
    return 0


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    import huggingface_hub

    kwargs = request["kwargs"]
    try:
        if request["call"] == "snapshot_download":
            answer: dict[str, Any] = {"path": huggingface_hub.snapshot_download(**kwargs)}
        elif request["call"] == "hf_hub_download":
            names = kwargs.pop("filenames")
            answer = {
                "paths": [huggingface_hub.hf_hub_download(filename=n, **kwargs) for n in names]
            }
        elif request["call"] == "scan_cache_dir":
            answer = _scanned(huggingface_hub.scan_cache_dir(**kwargs))
        else:
            raise SystemExit(f"unknown call {request['call']!r}")
    except Exception as exc:
        answer = {"error": type(exc).__name__, "message": str(exc)[:2000]}
    return answer


def _scanned(info: Any) -> dict[str, Any]:
    """``scan_cache_dir``'s answer as JSON: each repository's revisions (commit, refs, the
    files' paths in the snapshot) and the warnings (a repository it cannot read)."""
    repos = {
        f"{r.repo_type} {r.repo_id}": {
            rev.commit_hash: {
                "refs": sorted(rev.refs),
                "files": sorted(str(f.file_path.relative_to(rev.snapshot_path)) for f in rev.files),
            }
            for rev in r.revisions
        }
        for r in info.repos
    }
    return {"repos": repos, "warnings": [str(w) for w in info.warnings]}


if __name__ == "__main__":
    sys.exit(main())
