"""The real huggingface_hub, as the judge of ``blobdl hf``: run in its own process (it
imports httpx2 and starts threads; the test process forks), one call per run.

    python -m tests.hf_client '{"call": "snapshot_download", "kwargs": {...}}'

Prints one JSON line: ``{"path": ...}`` (or ``{"paths": [...]}`` for ``hf_hub_download``
over several files; ``{"repos": ..., "warnings": ...}`` for ``scan_cache_dir``, what
``hf cache ls`` shows), or ``{"error": <exception class>, "message": ...}``. The environment
(``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_OFFLINE``...) is the caller's; see ``hf_env``.
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
    request = json.dumps({"call": name, "kwargs": kwargs})
    done = subprocess.run(
        [sys.executable, "-m", "tests.hf_client", request],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, f"hf_client failed: {done.stderr[-3000:]}"
    answer: dict[str, Any] = json.loads(lines[-1])
    return answer


def main() -> int:
    request = json.loads(sys.argv[1])
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
    print(json.dumps(answer))
    return 0


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
