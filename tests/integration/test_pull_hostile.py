"""The hostile registry (issue #20): a scripted registry per example against the real CLI.

Whatever the registry does — manifests nested 100,000 deep, ``"layers": 5``, wrong types in
any field, tokens with CR/LF or characters no header can carry, redirects and token realms to
ambiguous or broken URLs, error statuses, huge bodies — and whether a proxy is in the way or
not, ``blobdl pull`` ends in one of two ways: exit 0 with a store Ollama can read (every
manifest at depth 4 parses and names only blobs present with the bytes of their digest), or
exactly one ``blobdl: error:`` line and exit 2-5. Either way nothing half-written is left
in ``blobs/`` or ``manifests/``, no process is left behind, and no credential reaches an
origin it does not belong to: the user's ``-H`` headers and the registry's token go only to
the registry's origin, the Docker config's password only to the registry and its token
realm and never in clear text to a proxy, the proxy's credentials only to the proxy.

``BLOBDL_PULL_HOSTILE_EXAMPLES=200 pytest tests/integration/test_pull_hostile.py`` searches
deeper, at random; the default is a small derandomized run that fits in ``make test``.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import json
import os
import re
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import blobdl
from blobdl.config import Settings
from blobdl.registry._names import parse_reference
from blobdl.registry._oci import Registry
from faultserver.hostile_registry import HostileRegistry
from faultserver.proxy import ForwardProxy
from faultserver.serverctl import start_server
from tests.conftest import REPO
from tests.integration.test_hostile import run_cli_tagged
from tests.strategies import (
    MANIFEST_TYPE,
    REGISTRY_REPO,
    REGISTRY_TAG,
    RegistryPorts,
    hostile_manifests,
    registry_faults,
    registry_models,
)

EXAMPLES = int(os.environ.get("BLOBDL_PULL_HOSTILE_EXAMPLES", "40"))
DEEP = "BLOBDL_PULL_HOSTILE_EXAMPLES" in os.environ
settings.register_profile(
    "pull-hostile",
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not DEEP,
    database=None if not DEEP else settings.default.database,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
    phases=list(Phase) if DEEP else [Phase.explicit, Phase.reuse, Phase.generate],
)

USER_AUTH = "Bearer user-secret-20"
USER_COOKIE = "session=user-cookie-20"
DOCKER_USER, DOCKER_PASSWORD = "alice", "docker-secret-20"
DOCKER_BASIC = "Basic " + base64.b64encode(f"{DOCKER_USER}:{DOCKER_PASSWORD}".encode()).decode()
PROXY_USER = "puser:proxy-secret-20"
PROXY_BASIC = "Basic " + base64.b64encode(PROXY_USER.encode()).decode()
BLOB_NAME = re.compile(r"sha256-([0-9a-f]{64})")


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileRegistry]:
    handle = HostileRegistry()
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as handle:
        yield handle


# --- one example --------------------------------------------------------------------------------


@st.composite
def pull_cases(draw: st.DrawFn, ports: RegistryPorts) -> dict[str, Any]:
    blobs, doc = draw(registry_models())
    good = json.dumps(doc).encode()
    auth = draw(st.sampled_from(["none", "bearer", "basic", "bearer+credentials"]))
    token = f"token-secret-{draw(st.integers(0, 999))}"
    script = {
        "repo": REGISTRY_REPO,
        "tag": REGISTRY_TAG,
        "manifest": base64.b64encode(draw(hostile_manifests(doc))).decode(),
        "content_type": MANIFEST_TYPE,
        "blobs": {d: base64.b64encode(data).decode() for d, data in blobs.items()},
        "auth": auth.partition("+")[0],
        "credentials": f"{DOCKER_USER}:{DOCKER_PASSWORD}" if auth != "bearer" else None,
        "token": token,
        "redirect": draw(st.booleans()),
        "storage_host": draw(st.sampled_from(["127.0.0.1", "localhost"])),
        "faults": draw(st.lists(registry_faults(ports, good.decode()), max_size=3)),
    }
    return {
        "script": script,
        "proxy": draw(st.sampled_from([None, "all", "bypassed by NO_PROXY"])),
        "insecure": draw(st.booleans()),  # a reference without a scheme, or http://
        "connections": draw(st.integers(1, 3)),
    }


def ports_of(hostile: HostileRegistry) -> RegistryPorts:
    return RegistryPorts(*(hostile.ports[role] for role in ("registry", "storage", "auth")))


@contextlib.contextmanager
def patched_env(**values: str | None) -> Iterator[None]:
    """``os.environ`` (which the CLI inherits) with these variables set, or removed (None)."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def docker_config(folder: Path, port: int, credentials: str | None) -> str:
    """A Docker config folder holding ``credentials`` for the registry on ``port``."""
    config = folder / "docker"
    config.mkdir(exist_ok=True)
    if credentials:
        auth = base64.b64encode(credentials.encode()).decode()
        entry = {"auths": {f"127.0.0.1:{port}": {"auth": auth}}}
        (config / "config.json").write_text(json.dumps(entry))
    return str(config)


NO_PROXIES = {name: None for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy",
              "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")}  # fmt: skip


def environment(case: dict[str, Any], folder: Path, proxy: ForwardProxy) -> Any:
    """The CLI's environment: a Docker config with the password (when the script asks for
    one), and the proxy as HTTP_PROXY (with NO_PROXY naming 127.0.0.1, or not)."""
    port, credentials = case["ports"].registry, case["script"]["credentials"]
    values: dict[str, str | None] = {
        **NO_PROXIES,
        "DOCKER_CONFIG": docker_config(folder, port, credentials),
    }
    if case["proxy"] is not None:
        values["HTTP_PROXY"] = f"http://{PROXY_USER}@127.0.0.1:{proxy.port}"
    if case["proxy"] == "bypassed by NO_PROXY":
        values["NO_PROXY"] = "127.0.0.1"  # storage named "localhost" still goes through it
    return patched_env(**values)


def cli_args(case: dict[str, Any], models: Path) -> list[str]:
    host = f"127.0.0.1:{case['ports'].registry}"
    reference = f"{host}/{REGISTRY_REPO}:{REGISTRY_TAG}"
    scheme = ["--insecure"] if case["insecure"] else []
    reference = reference if case["insecure"] else f"http://{reference}"
    return ["pull", reference, *scheme, "--models-dir", str(models), "-q",
            "-H", f"Authorization: {USER_AUTH}", "-H", f"Cookie: {USER_COOKIE}",
            "--connections", str(case["connections"]), "--retries", "1",
            "--max-backoff", "0.01", "--stall-timeout", "1", "--min-part-size", "16KB",
            "--max-part-size", "16KB", "--progress-interval", "0.05"]  # fmt: skip


# --- the invariant ------------------------------------------------------------------------------


def store_problems(models: Path) -> list[str]:
    """What Ollama could not read, or would take for a model, in ``models``: every manifest
    at depth 4 must parse and name only blobs present with their digest's bytes; ``blobs/``
    holds only complete blobs named by their digest; nothing else sits in ``manifests/``."""
    problems = [f"blob {name}: {p}" for name, p in _blob_problems(models / "blobs")]
    manifests = models / "manifests"
    for path in sorted(manifests.rglob("*")) if manifests.exists() else []:
        depth = len(path.relative_to(manifests).parts)
        if path.is_dir() and depth < 4:
            continue
        if path.is_dir() or depth != 4 or path.is_symlink() or path.name.startswith("."):
            problems.append(f"not a manifest Ollama can name: {path.relative_to(manifests)}")
            continue
        problems += [f"{path.name}: {p}" for p in _manifest_problems(path, models / "blobs")]
    return problems


def _blob_problems(blobs: Path) -> Iterator[tuple[str, str]]:
    for path in sorted(blobs.iterdir()) if blobs.exists() else []:
        match = BLOB_NAME.fullmatch(path.name)
        if not match or not path.is_file() or path.is_symlink():
            yield path.name, "not a blob Ollama keeps"
        elif hashlib.sha256(path.read_bytes()).hexdigest() != match.group(1):
            yield path.name, "its bytes do not match its name"


def _manifest_problems(path: Path, blobs: Path) -> list[str]:
    try:
        doc = json.loads(path.read_bytes().decode("utf-8", "replace"))  # as Go reads it
        # Ollama fetches and keeps a config only when it has a digest; every layer has one.
        config = doc.get("config") or {}
        entries = [config] if config.get("digest") else []
        digests = [entry["digest"] for entry in [*entries, *(doc.get("layers") or [])]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return [f"does not parse: {exc!r:.100}"]
    missing = [d for d in digests if not (blobs / str(d).replace(":", "-")).is_file()]
    return [f"names missing blobs {missing}"] if missing else []


def check_run(run: Any, case: dict[str, Any], models: Path) -> None:
    assert run.code is not None, f"hang: no exit; stderr={run.stderr[-2000:]!r}"
    assert not run.leftovers, f"processes left behind: {run.leftovers}"
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    problems = store_problems(models)
    assert not problems, f"exit {run.code}, the store: {problems}; stderr={run.stderr!r:.600}"
    manifest = models / "manifests" / f"127.0.0.1:{case['ports'].registry}" / REGISTRY_REPO
    stored = manifest / REGISTRY_TAG
    if run.code == 0:
        served = base64.b64decode(case["script"]["manifest"])
        assert stored.read_bytes() == served, "exit 0 with other bytes than the registry's"
        return
    assert 2 <= run.code <= 5, f"exit {run.code}, stderr={run.stderr[-2000:]!r}"
    errors = [line for line in run.stderr.splitlines() if line.startswith("blobdl: error:")]
    assert len(errors) == 1, f"exit {run.code}, not one error line:\n{run.stderr[-2000:]}"
    assert not stored.exists(), f"exit {run.code} but the manifest was written"


def credential_problems(
    log: list[dict[str, Any]], forwarded: list[dict[str, str]], token: str
) -> list[str]:
    """Credentials seen where they do not belong. The registry's origin may see them all;
    the token realm the Docker config's password (and nothing of the user's); storage none;
    no origin the proxy's; the proxy no password in clear text."""
    allowed = {
        "registry": {USER_AUTH, USER_COOKIE, DOCKER_BASIC, f"Bearer {token}"},
        "auth": {DOCKER_BASIC},
        "storage": set(),
    }
    secrets = {USER_AUTH, USER_COOKIE, DOCKER_BASIC, f"Bearer {token}", PROXY_BASIC}
    problems = []
    for entry in log:
        for name, value in entry["headers"].items():
            leaked = [s for s in secrets - allowed[entry["role"]] if s in value]
            if leaked:
                problems.append(f"{entry['role']} {entry['path'][:60]} got {name}: {leaked}")
    for headers in forwarded:
        if any(DOCKER_PASSWORD in v or DOCKER_BASIC in v for v in headers.values()):
            problems.append(f"the proxy saw the Docker password in clear text: {headers}")
    return problems


@settings(settings.get_profile("pull-hostile"))
@given(data=st.data())
def test_hostile_registry_pull_cli(
    hostile: HostileRegistry, proxy: ForwardProxy, tmp_path_factory: pytest.TempPathFactory,
    data: st.DataObject,
) -> None:  # fmt: skip
    ports = RegistryPorts(
        hostile.ports["registry"], hostile.ports["storage"], hostile.ports["auth"]
    )
    case = {**data.draw(pull_cases(ports)), "ports": ports}
    folder = tmp_path_factory.mktemp("pull-case")
    models, work = folder / "models", folder / "work"
    work.mkdir()
    hostile.load(case["script"])
    seen_before = len(proxy.seen)
    with environment(case, folder, proxy):
        run = run_cli_tagged(cli_args(case, models), work)
    check_run(run, case, models)
    forwarded = [dict(s.headers) for s in proxy.seen[seen_before:] if s.method != "CONNECT"]
    leaks = credential_problems(hostile.log(), forwarded, case["script"]["token"])
    assert not leaks, leaks


# --- the cases issue #20 names, one test each -----------------------------------------------------


def fixed_model() -> tuple[dict[str, bytes], dict[str, Any]]:
    layer, config = bytes(range(256)) * 11 + b"x" * 184, b'{"model_format":"gguf"}'
    entries = [
        {"mediaType": "application/vnd.docker.container.image.v1+json",
         "digest": "sha256:" + hashlib.sha256(config).hexdigest(), "size": len(config)},
        {"mediaType": "application/vnd.ollama.image.model",
         "digest": "sha256:" + hashlib.sha256(layer).hexdigest(), "size": len(layer)},
    ]  # fmt: skip
    doc = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": entries[0],
           "layers": entries[1:]}  # fmt: skip
    return {str(entries[0]["digest"]): config, str(entries[1]["digest"]): layer}, doc


def script(
    manifest: bytes | None = None, faults: list[dict[str, object]] = (), **fields: object
) -> dict[str, Any]:  # fmt: skip
    blobs, doc = fixed_model()
    raw = json.dumps(doc).encode() if manifest is None else manifest
    return {"repo": REGISTRY_REPO, "tag": REGISTRY_TAG, "content_type": MANIFEST_TYPE,
            "manifest": base64.b64encode(raw).decode(), "auth": "none", "credentials": None,
            "token": "token-secret-1", "redirect": False, "faults": list(faults),
            "blobs": {d: base64.b64encode(data).decode() for d, data in blobs.items()},
            **fields}  # fmt: skip


def pull_from(
    hostile: HostileRegistry, tmp_path: Path, *args: str, pin: str = "", **env: str | None
) -> tuple[Any, Path]:  # fmt: skip
    """``blobdl pull`` of the scripted model into ``tmp_path/models`` (``@pin`` after the
    reference if given): (the run, the store)."""
    models, work = tmp_path / "models", tmp_path / "work"
    work.mkdir(exist_ok=True)
    reference = f"http://127.0.0.1:{hostile.ports['registry']}/{REGISTRY_REPO}:{REGISTRY_TAG}"
    reference += f"@{pin}" if pin else ""
    values: dict[str, str | None] = {**NO_PROXIES, "DOCKER_CONFIG": str(tmp_path / "none"), **env}
    with patched_env(**values):
        run = run_cli_tagged(["pull", reference, "--models-dir", str(models), "-q",
                              "--retries", "1", "--max-backoff", "0.01", *args], work)  # fmt: skip
    return run, models


def one_error_line(run: Any) -> str:
    assert run.code is not None and 2 <= run.code <= 5, (run.code, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("blobdl: error: "), run.stderr
    return lines[0]


def rule(role: str, match: str, **answer: object) -> dict[str, object]:
    return {"role": role, "match": match, "skip": 0, "times": None, **answer}


def redirect(match: str, location: str) -> dict[str, object]:
    return rule("registry", match, status=307, headers={"Location": location})


BAD_REALM = 'Bearer realm="http://[::1]x/token"'
_, _DOC = fixed_model()
_DIGEST = _DOC["layers"][0]["digest"]
_GOOD = json.dumps(_DOC)
BEARER = {"auth": "bearer"}
HOSTILE_ANSWERS = {
    "manifest nested 100,000 deep": script(b"[" * 100_000),
    "manifest objects nested 50,000 deep": script(b'{"a":' * 50_000),
    '"layers": 5': script(json.dumps({**_DOC, "layers": 5}).encode()),
    "a size that is a string": script(
        json.dumps({**_DOC, "layers": [{**_DOC["layers"][0], "size": "3000"}]}).encode()
    ),
    "a digest with a trailing newline": script(
        json.dumps({**_DOC, "layers": [{**_DOC["layers"][0], "digest": _DIGEST + "\n"}]}).encode()
    ),
    '"LAYERS" beside "layers"': script(json.dumps({**_DOC, "LAYERS": 5}).encode()),
    # Go folds keys as Unicode's simple folding does: "digeﬆ" is no field of Ollama's, which
    # would read a layer with no digest ("conﬁg" reads as no config: pulled, see
    # test_pull_as_ollama).
    '"digeﬆ" for a layer\'s "digest"': script('"digeﬆ"'.join(_GOOD.rsplit('"digest"', 1)).encode()),
    "a manifest of 5 MB": script(faults=[rule("registry", "manifests", repeat=[" ", 5 << 20])]),
    "token JSON nested 100,000 deep": script(
        faults=[rule("auth", "", body="[" * 100_000)], **BEARER
    ),
    "a token with CR/LF": script(
        faults=[rule("auth", "", body='{"token": "a\\r\\nX-Injected: 1"}')], **BEARER
    ),
    "a token that is not latin-1": script(
        faults=[rule("auth", "", body='{"token": "\\u2603"}')], **BEARER
    ),
    "a token answer of 5 MB": script(faults=[rule("auth", "", repeat=["x", 5 << 20])], **BEARER),
    "a Location with port 99999": script(
        faults=[redirect("manifests", "http://127.0.0.1:99999/x")]
    ),
    "a Location with a malformed IPv6 literal": script(
        faults=[redirect("manifests", "http://[::1")]
    ),
    "a blob Location with a malformed IPv6 literal": script(
        faults=[redirect("blobs", "http://[:::1]/b")]
    ),
    "a realm with a malformed IPv6 literal": script(
        faults=[rule("registry", "manifests", status=401, headers={"WWW-Authenticate": BAD_REALM})]
    ),
}


@pytest.mark.parametrize("answer", list(HOSTILE_ANSWERS), ids=list(HOSTILE_ANSWERS))
def test_a_hostile_registry_answer_is_one_error_line(
    hostile: HostileRegistry, tmp_path: Path, answer: str
) -> None:
    hostile.load(HOSTILE_ANSWERS[answer])
    run, models = pull_from(hostile, tmp_path)
    line = one_error_line(run)
    assert not re.search(r"[a-z][A-Z]\w*(Error|Exception)\b", line), line  # no class names
    assert not store_problems(models) and not (models / "manifests").exists()


def challenged(hostile: HostileRegistry, *challenges: str) -> dict[str, Any]:
    """The scripted model behind Bearer tokens, whose first 401 says ``challenges`` (each
    on its own ``WWW-Authenticate`` line; {realm} is the token server's)."""
    realm = f"http://127.0.0.1:{hostile.ports['auth']}/token"
    names = ("WWW-Authenticate", "www-authenticate")[: len(challenges)]  # one line each
    lines = {name: c.format(realm=realm) for name, c in zip(names, challenges, strict=True)}
    return script(faults=[{**rule("registry", "manifests", status=401, headers=lines),
                           "times": 1}], **BEARER)  # fmt: skip


SCOPE = f'scope="repository:{REGISTRY_REPO}:pull"'


@pytest.mark.parametrize(
    "challenges",
    [
        ('Bearer realm="{realm}",service="hostile",' + SCOPE, 'Basic realm="Registry Realm"'),
        ('Basic realm="Registry Realm"', 'Bearer realm="{realm}",service="hostile",' + SCOPE),
        ('Basic realm="x", Bearer realm="{realm}",service="hostile",' + SCOPE,),
        ('Bearer realm = "{realm}" , service = "hostile"',),  # RFC 7235: spaces around "="
        ('Bearer service="a,b", realm="{realm}"',),  # a comma inside a quoted value
        ('Negotiate abc==, Bearer realm="{realm}"',),  # a token68 first
    ],
    ids=["bearer then basic", "basic then bearer", "two in one line", "spaces around =",
         "a quoted comma", "a token68 first"],
)  # fmt: skip
def test_a_registry_offering_several_challenges_is_answered_with_bearer(
    hostile: HostileRegistry, tmp_path: Path, challenges: tuple[str, ...]
) -> None:
    hostile.load(challenged(hostile, *challenges))
    run, models = pull_from(hostile, tmp_path)
    assert run.code == 0, run.stderr
    assert not store_problems(models)
    assert [e["path"] for e in requests_at(hostile, "auth")] != []


@pytest.mark.parametrize("pinned", [False, True], ids=["Docker-Content-Digest", "a pin"])
def test_a_manifest_whose_bytes_are_not_the_digest_it_is_served_as_is_refused(
    hostile: HostileRegistry, tmp_path: Path, pinned: bool
) -> None:
    good = json.dumps(fixed_model()[1]).encode()
    digest = "sha256:" + hashlib.sha256(good).hexdigest()
    served = good.replace(b"{", b"{ ", 1)  # the same JSON, other bytes
    headers = {
        "Content-Type": MANIFEST_TYPE,
        **({} if pinned else {"Docker-Content-Digest": digest}),
    }
    hostile.load(script(faults=[rule("registry", "manifests", status=200, headers=headers,
                                     body=served.decode())]))  # fmt: skip
    run, models = pull_from(hostile, tmp_path, pin=digest if pinned else "")
    assert run.code == 4 and "digest mismatch" in one_error_line(run), run.stderr
    assert not (models / "manifests").exists()


def many_layers(count: int) -> dict[str, Any]:
    """A model of ``count`` small layers (a safetensors model has one per tensor)."""
    blobs, doc = fixed_model()
    layers = [hashlib.sha256(b"%d" % i).digest() for i in range(count)]
    doc["layers"] = [
        {
            "mediaType": "application/vnd.ollama.image.tensor",
            "size": len(data),
            "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        }
        for data in layers
    ]
    blobs.update({e["digest"]: data for e, data in zip(doc["layers"], layers, strict=True)})
    encoded = {d: base64.b64encode(data).decode() for d, data in blobs.items()}
    return script(json.dumps(doc).encode(), blobs=encoded)


def pull_with_open_files(
    hostile: HostileRegistry, tmp_path: Path, soft: int, hard: int
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    reference = f"http://127.0.0.1:{hostile.ports['registry']}/{REGISTRY_REPO}:{REGISTRY_TAG}"
    return subprocess.run(
        [sys.executable, "-m", "blobdl", "pull", reference, "--models-dir", str(tmp_path / "m"),
         "-q", "--retries", "0"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )  # fmt: skip


def test_a_model_of_more_layers_than_open_files_allow_is_pulled(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    """Each layer is claimed (a lock file held open) for the whole pull: a model of 600
    layers needs more than a soft limit of 128 open files, which may be raised to the hard."""
    assert os.geteuid() == 0, "CI runs as root: raising the hard limit needs it"
    hostile.load(many_layers(600))
    done = pull_with_open_files(hostile, tmp_path, soft=128, hard=4096)
    assert done.returncode == 0, done.stderr
    assert len(os.listdir(tmp_path / "m" / "blobs")) == 601 and not store_problems(tmp_path / "m")


def test_a_model_of_more_layers_than_the_hard_limit_allows_is_one_clear_line(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    hostile.load(many_layers(600))
    done = pull_with_open_files(hostile, tmp_path, soft=128, hard=256)
    assert done.returncode == 5, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("blobdl: error: cannot pull a model of 601 blobs: it needs ") and (
        "open files at once, and at most 256 are allowed (ulimit -n)" in line
    ), line
    assert not (tmp_path / "m" / "blobs").exists() or os.listdir(tmp_path / "m" / "blobs") == []


# --- where each header goes ---------------------------------------------------------------------


def requests_at(hostile: HostileRegistry, role: str) -> list[dict[str, Any]]:
    return [entry for entry in hostile.log() if entry["role"] == role]


def test_user_headers_reach_the_registry_and_never_the_presigned_storage(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    hostile.load(script(redirect=True))
    headers = [f"Authorization: {USER_AUTH}", f"Cookie: {USER_COOKIE}", "Accept-Language: fr"]
    run, models = pull_from(hostile, tmp_path, *[a for h in headers for a in ("-H", h)])
    assert run.code == 0, run.stderr
    registry, storage = requests_at(hostile, "registry"), requests_at(hostile, "storage")
    assert {"/manifests/", "/blobs/"} <= {p for e in registry for p in ("/manifests/", "/blobs/")
                                          if p in e["path"]}  # fmt: skip
    for entry in registry:
        assert (entry["headers"].get("Authorization"), entry["headers"].get("Cookie")) == (
            USER_AUTH, USER_COOKIE)  # fmt: skip
    assert storage and not [e for e in storage if {"Authorization", "Cookie"} & set(e["headers"])]
    assert all(e["headers"].get("Accept-Language") == "fr" for e in storage)  # a harmless one
    assert not store_problems(models)


def test_every_registry_request_says_blobdl_user_agent(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    hostile.load(script(auth="bearer", redirect=True))
    run, _ = pull_from(hostile, tmp_path)
    assert run.code == 0, run.stderr
    roles = {entry["role"] for entry in hostile.log()}
    assert roles == {"registry", "auth", "storage"}
    agents = {entry["headers"].get("User-Agent") for entry in hostile.log()}
    assert agents == {f"blobdl/{blobdl.__version__}"}


@pytest.mark.parametrize("status", [408, 425, 429, 500, 503])
def test_a_status_the_engine_retries_is_retried_by_the_registry_too(
    hostile: HostileRegistry, tmp_path: Path, status: int
) -> None:
    answer = {"status": status, "headers": {"Retry-After": "0"}, "times": 1}
    hostile.load(script(auth="bearer", faults=[rule("registry", "manifests", **answer),
                                               rule("auth", "", **answer)]))  # fmt: skip
    run, models = pull_from(hostile, tmp_path)
    assert run.code == 0, run.stderr
    assert not store_problems(models)


def ambiguous(hostile: HostileRegistry, path: str) -> str:
    """A URL urllib.parse reads as the registry's and urllib3 as storage's."""
    return (
        f"http://127.0.0.1:{hostile.ports['storage']}\\@127.0.0.1:{hostile.ports['registry']}{path}"
    )


def test_a_manifest_redirect_read_differently_by_the_two_parsers_sends_no_credential(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    path = f"/v2/{REGISTRY_REPO}/manifests/{REGISTRY_TAG}"
    # The first manifest request is answered 401 (a token is fetched); the second, with the
    # token, is redirected.
    redirect = {"status": 307, "headers": {"Location": ambiguous(hostile, path)}, "skip": 1}
    hostile.load(script(auth="bearer", faults=[rule("registry", "manifests", **redirect)]))
    run, models = pull_from(hostile, tmp_path, "-H", f"Cookie: {USER_COOKIE}")
    assert "two parsers" in one_error_line(run)
    assert requests_at(hostile, "storage") == []
    assert not (models / "manifests").exists()


def test_a_token_redirect_read_differently_by_the_two_parsers_sends_no_password(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    redirect = {"status": 307, "headers": {"Location": ambiguous(hostile, "/token")}}
    credentials = f"{DOCKER_USER}:{DOCKER_PASSWORD}"
    hostile.load(script(auth="bearer", credentials=credentials,
                        faults=[rule("auth", "", **redirect)]))  # fmt: skip
    config = docker_config(tmp_path, hostile.ports["registry"], credentials)
    run, _ = pull_from(hostile, tmp_path, DOCKER_CONFIG=config)
    assert "two parsers" in one_error_line(run)
    assert requests_at(hostile, "storage") == []


def test_a_token_realm_redirecting_to_another_origin_sends_it_no_password(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    """The Docker config's password goes to the token realm, and not to where the realm
    sends the request on: there a token is asked for with no credential."""
    elsewhere = f"http://127.0.0.1:{hostile.ports['storage']}/token"
    credentials = f"{DOCKER_USER}:{DOCKER_PASSWORD}"
    onwards = rule("auth", "", status=307, headers={"Location": elsewhere})
    hostile.load(script(auth="bearer", credentials=credentials, faults=[onwards]))
    config = docker_config(tmp_path, hostile.ports["registry"], credentials)
    pull_from(hostile, tmp_path, DOCKER_CONFIG=config)  # the outcome is not the point
    asked = requests_at(hostile, "storage")
    assert asked, "the realm's redirect was not followed: this test shows nothing"
    assert not [e for e in asked if DOCKER_PASSWORD in str(e) or DOCKER_BASIC in str(e)], asked


# --- proxies: NO_PROXY, and no password in clear text -------------------------------------------


def proxied(proxy: ForwardProxy, since: int) -> list[str]:
    return [seen.target for seen in proxy.seen[since:]]


def test_registry_requests_go_through_the_proxy_the_environment_names(
    hostile: HostileRegistry, proxy: ForwardProxy, tmp_path: Path
) -> None:
    hostile.load(script(auth="bearer", redirect=True))
    before = len(proxy.seen)
    run, _ = pull_from(hostile, tmp_path, HTTP_PROXY=f"http://{PROXY_USER}@127.0.0.1:{proxy.port}")
    assert run.code == 0, run.stderr
    targets = proxied(proxy, before)
    for what in ("/manifests/", "/token?", "/blobs/", "?sig=presigned"):
        assert any(what in target for target in targets), (what, targets)
    assert not [e for e in hostile.log() if "Proxy-Authorization" in e["headers"]]


def test_no_proxy_naming_the_registry_bypasses_the_proxy_for_manifest_token_and_blobs(
    hostile: HostileRegistry, proxy: ForwardProxy, tmp_path: Path
) -> None:
    credentials = f"{DOCKER_USER}:{DOCKER_PASSWORD}"
    hostile.load(script(auth="bearer", credentials=credentials, redirect=True))
    config = docker_config(tmp_path, hostile.ports["registry"], credentials)
    before = len(proxy.seen)
    run, models = pull_from(hostile, tmp_path, DOCKER_CONFIG=config, NO_PROXY="127.0.0.1",
                            HTTP_PROXY=f"http://127.0.0.1:{proxy.port}")  # fmt: skip
    assert run.code == 0, run.stderr
    assert proxied(proxy, before) == []
    assert not store_problems(models)


def test_the_docker_password_never_reaches_a_proxy_in_clear_text(
    hostile: HostileRegistry, proxy: ForwardProxy, tmp_path: Path
) -> None:
    credentials = f"{DOCKER_USER}:{DOCKER_PASSWORD}"
    for mode in ("basic", "bearer"):  # the registry's Basic, and the token realm's
        hostile.load(script(auth=mode, credentials=credentials))
        config = docker_config(tmp_path, hostile.ports["registry"], credentials)
        before = len(proxy.seen)
        run, _ = pull_from(hostile, tmp_path, DOCKER_CONFIG=config,
                           HTTP_PROXY=f"http://127.0.0.1:{proxy.port}")  # fmt: skip
        line = one_error_line(run)
        assert f"proxy http://127.0.0.1:{proxy.port}" in line and "NO_PROXY" in line, line
        seen = [dict(s.headers) for s in proxy.seen[before:]]
        assert not [h for h in seen if DOCKER_BASIC in h.values()], seen


@pytest.mark.parametrize("what", ["manifest", "token"])
def test_a_registry_document_that_trickles_in_ends_the_pull_instead_of_holding_it(
    hostile: HostileRegistry, tmp_path: Path, what: str
) -> None:
    """A manifest or token answer paced so that the socket is never silent for a stall
    timeout (a 64 KiB step every 1.5 s, 2.5 MB: a minute; a byte a second: 4 MiB in weeks)
    held the pull with nothing on screen. A small document has the stall timeout to
    arrive whole: the pull ends with one line instead."""
    root = tmp_path / "served"
    root.mkdir()
    body = _GOOD if what == "manifest" else json.dumps({"token": "token-secret-1"})
    (root / "doc.json").write_text(body + " " * (5 << 19))  # whitespace: still valid JSON
    with start_server(root) as srv:
        srv.set_faults({"path": "/files/doc.json", "action": "rate", "bps": (64 << 10) / 1.5,
                        "times": None})  # fmt: skip
        if what == "manifest":
            hostile.load(script(faults=[redirect("manifests", srv.url("doc.json"))]))
        else:
            realm = f'Bearer realm="{srv.url("doc.json")}"'
            hostile.load(script(faults=[rule("registry", "manifests", status=401,
                                             headers={"WWW-Authenticate": realm})]))  # fmt: skip
        run, models = pull_from(hostile, tmp_path, "--stall-timeout", "2")
    assert run.code is not None, "the pull was still reading the trickle"
    line = one_error_line(run)
    assert "doc.json" in line, line
    assert not (models / "manifests").exists()


def test_a_registry_answer_whose_head_trickles_in_ends_the_pull_instead_of_holding_it(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    """The same for the status line and headers (of the manifest here; a blob lookup's
    are read the same way): a header line paced a byte every half second never leaves the
    socket silent for the stall timeout, and may run to 64 KiB (nine hours) a line."""
    hostile.load(script(faults=[rule("registry", "manifests", trickle_head=0.5)]))
    run, models = pull_from(hostile, tmp_path, "--stall-timeout", "2")
    assert run.code is not None, "the pull was still reading the head"
    one_error_line(run)
    assert not (models / "manifests").exists()


def test_a_blob_the_registry_redirects_only_once_the_download_starts_gets_no_credential(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    """The registry serves both blob lookups itself, then answers the download's own GETs
    with a redirect to another origin: the token (and the user's Authorization) stay
    behind, as when the lookup itself is redirected."""
    storage = f"http://127.0.0.1:{hostile.ports['storage']}/blobs/"
    blobs, _ = fixed_model()
    faults = [{**rule("registry", digest, status=307,
                      headers={"Location": f"{storage}{digest}?sig=late"}), "skip": 1}
              for digest in blobs]  # fmt: skip
    hostile.load(script(faults=faults, auth="bearer"))
    run, models = pull_from(hostile, tmp_path, "-H", f"Authorization: {USER_AUTH}")
    assert run.code == 0, run.stderr
    assert not store_problems(models)
    seen = requests_at(hostile, "storage")
    assert seen, "the download was never redirected"
    assert not [e for e in seen if "authorization" in {k.lower() for k in e["headers"]}], seen


@pytest.mark.parametrize("redirect", [False, True], ids=["registry", "via storage"])
def test_a_registry_closing_kept_connections_as_requests_come_costs_the_pull_no_retry(
    hostile: HostileRegistry, tmp_path: Path, redirect: bool
) -> None:
    """Every origin closes each connection it kept as the next request on it comes (an idle
    connection's close crossing the request, as at a keep-alive timeout). A model of 40
    layers: its blobs (a batch's seats) go over kept connections; each such request is
    asked again on another, never counted as a failed attempt: with ``--retries 0`` the
    pull lands. The lookups (threads sharing one pool) never go over one: their answers are
    left unread (``get_document`` closes such a connection), so none is asked twice, and
    this test does not reach the bound of re-asks shared by threads (``_LOST_AGAIN``)."""
    model = many_layers(40)
    closed = {"match": "", "skip": 0, "times": None, "kept": True, "close": True}
    hostile.load({**model, "redirect": redirect, "faults": [closed]})
    run, models = pull_from(hostile, tmp_path, "--retries", "0")
    assert run.code == 0, run.stderr
    assert len(os.listdir(models / "blobs")) == 41 and not store_problems(models)
    hits = hostile.hits()
    assert hits[0] > 0, "no request came on a kept connection"
    # The blobs' downloads (not the lookups' one-byte ranges) were among those asked again,
    # on the origin that serves them.
    log = [e for e in hostile.log() if "/blobs/" in e["path"]]
    downloads = [e for e in log if e["headers"].get("Range") != "bytes=0-0"]
    assert {e["role"] for e in downloads} == {"storage" if redirect else "registry"}
    assert len(downloads) > 41, len(downloads)


def test_a_pull_under_a_limit_of_a_few_bytes_a_second_looks_its_blobs_up_as_few_at_a_time(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    """Under ``--limit-rate 2`` no more than two connections run at once (each gets a byte a
    second at least): the blobs' look-ups before the downloads too (a byte each, eight at
    once before). The registry answers each look-up late, so that they overlap; storage
    then refuses the downloads, which ends the pull at once (its bytes would take minutes at
    2 B/s)."""
    model = many_layers(6)
    slow = rule("registry", "/blobs/", delay=0.3)
    refused = rule("storage", "", status=403)
    hostile.load({**model, "redirect": True, "faults": [slow, refused]})
    run, _ = pull_from(hostile, tmp_path, "--limit-rate", "2", "--retries", "0")
    assert run.code == 3, run.stderr  # refused, as scripted
    assert hostile.hits()[0] >= 7, "every blob was looked up"
    assert hostile.peak("registry") <= 2, hostile.peak("registry")


def _asked(port: int, path: str) -> socket.socket:
    """A GET of ``path`` whose answer has begun (the server has counted it): its socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    with sock.makefile("rb") as answer:
        assert answer.read(9) == b"HTTP/1.1 "
    return sock


def test_a_request_of_an_earlier_script_still_being_answered_is_not_in_the_next_ones_peak() -> None:
    """A test reads ``peak`` as the most requests its own pull had at once. A request of
    the script before, still being answered after its client left (a head trickling a byte
    every few seconds: its thread learns the client is gone only at its second write after),
    is none of them. Counted, it made the limit-rate test above read 3 for the pull's two
    look-ups when the head-trickling test ran just before it (every 4th test: 4 shards)."""
    server = HostileRegistry()  # its own: the trickle outlives this test, until ``stop``
    try:
        manifest = f"/v2/{REGISTRY_REPO}/manifests/{REGISTRY_TAG}"
        server.load(script(faults=[rule("registry", "manifests", trickle_head=30)]))
        _asked(server.ports["registry"], manifest).close()
        server.load(script())
        with _asked(server.ports["registry"], manifest):
            assert server.peak("registry") == 1
    finally:
        server.stop()


# --- a look-up is a probe -------------------------------------------------------------------------


def _first_bytes_asked(hostile: HostileRegistry) -> collections.Counter[str]:
    """How often each blob's first byte alone was asked for (``Range: bytes=0-0``)."""
    asked = [e for e in hostile.log() if "/blobs/" in e["path"]]
    return collections.Counter(e["path"] for e in asked if e["headers"].get("Range") == "bytes=0-0")


def test_a_blob_the_registry_serves_itself_has_its_first_byte_asked_for_once(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    """A pull looks each blob up (``Range: bytes=0-0``) to learn where it is served. Where
    the registry serves it itself, that answer says all a download's probe learns (size,
    ranges, validators): the blob's download no longer asks the same again, a round trip
    (and a connection) per layer, 50 ms and more from a distant registry. ``--parts 2``:
    every blob is fetched the way a large one is."""
    hostile.load(script())
    run, models = pull_from(hostile, tmp_path, "--parts", "2")
    assert run.code == 0, run.stderr
    assert store_problems(models) == []
    assert sorted(_first_bytes_asked(hostile).values()) == [1, 1]


def test_a_blob_served_from_storage_is_probed_there(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    """A look-up answered with a redirect says nothing of the blob: its download probes the
    storage it is sent to, as before."""
    hostile.load({**script(), "redirect": True})
    run, models = pull_from(hostile, tmp_path, "--parts", "2")
    assert run.code == 0, run.stderr
    assert store_problems(models) == []
    roles = collections.Counter(
        e["role"] for e in hostile.log() if e["headers"].get("Range") == "bytes=0-0"
    )
    assert roles == {"registry": 2, "storage": 2}


def test_a_look_up_times_the_registrys_answer_as_a_probe_does(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    """What a look-up learned stands for the probe, and with it how long the registry takes
    to answer a request: the lanes waiting that long for their answers are not cut as
    laggards (``_steal.answer_wait``; a probe's time of 0 would let them be, after 0.15 s)."""
    hostile.load(script(faults=[rule("registry", "/blobs/", delay=0.3)]))
    where = f"127.0.0.1:{hostile.ports['registry']}/{REGISTRY_REPO}:{REGISTRY_TAG}"
    registry = Registry(parse_reference(where), Settings(), plain_http=True)
    blobs = registry.manifest().blobs
    sources = registry.blob_sources(blobs)
    assert [s.remote.size if s.remote else None for s in sources] == [b.size for b in blobs]
    assert all(s.remote and 0.3 <= s.remote.answer_time < 3 for s in sources), sources
