"""Every hostile registry answer from tests/strategies.py on its own, against the real CLI:
each manifest variant, then each fault (to a token-auth registry whose blobs live on
storage, with the Docker config's password): the exhaustive survey beside the random
property in tests/integration/test_pull_hostile.py.

    .venv/bin/python -m tests.pull_hostile_sweep [SUBSTRING]   # only cases whose JSON has it

Prints one FAIL line per broken case and a count; takes a minute or two.
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from faultserver.hostile_registry import HostileRegistry
from tests.integration.test_hostile import run_cli_tagged
from tests.integration.test_pull_hostile import (
    DOCKER_PASSWORD,
    DOCKER_USER,
    NO_PROXIES,
    check_run,
    cli_args,
    credential_problems,
    docker_config,
    fixed_model,
    patched_env,
)
from tests.strategies import RegistryPorts, fault_catalogue, manifest_variants


def cases(ports: RegistryPorts) -> list[dict[str, Any]]:
    blobs, doc = fixed_model()
    good = json.dumps(doc).encode()
    base = {"repo": "library/hostile", "tag": "v1", "token": "token-secret-1",
            "content_type": "application/vnd.docker.distribution.manifest.v2+json",
            "blobs": {d: base64.b64encode(data).decode() for d, data in blobs.items()},
            "storage_host": "127.0.0.1", "faults": []}  # fmt: skip
    plain = {**base, "auth": "none", "credentials": None, "redirect": False}
    guarded = {**base, "auth": "bearer", "credentials": f"{DOCKER_USER}:{DOCKER_PASSWORD}",
               "redirect": True, "manifest": base64.b64encode(good).decode()}  # fmt: skip
    return [
        *({**plain, "manifest": base64.b64encode(raw).decode()} for raw in manifest_variants(doc)),
        *({**guarded, "faults": [fault]} for fault in fault_catalogue(ports, good.decode())),
    ]


def main() -> int:
    only = sys.argv[1] if len(sys.argv) > 1 else None
    hostile = HostileRegistry()
    ports = RegistryPorts(
        hostile.ports["registry"], hostile.ports["storage"], hostile.ports["auth"]
    )
    failed = tried = 0
    try:
        for script in cases(ports):
            manifest = base64.b64decode(script["manifest"]).decode("latin-1")
            shown = json.dumps(script["faults"] or manifest)[:160]
            if only and only not in json.dumps(script["faults"]) + manifest:
                continue
            tried += 1
            folder = Path(tempfile.mkdtemp(prefix="pull-sweep-"))
            (folder / "work").mkdir()
            case = {"script": script, "ports": ports, "insecure": True, "connections": 2}
            hostile.load(script)
            config = docker_config(folder, ports.registry, script["credentials"])
            with patched_env(**NO_PROXIES, DOCKER_CONFIG=config):
                run = run_cli_tagged(cli_args(case, folder / "models"), folder / "work")
            try:
                check_run(run, case, folder / "models")
                leaks = credential_problems(hostile.log(), [], script["token"])
                assert not leaks, leaks
            except AssertionError as exc:
                failed += 1
                print(f"FAIL {shown}\n    -> exit {run.code}: {str(exc)[:300]}", flush=True)
    finally:
        hostile.stop()
    print(f"{tried - failed} of {tried} cases hold the invariant")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
