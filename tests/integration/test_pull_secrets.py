"""``blobdl pull`` from a registry over TLS: no credential goes down to plain HTTP.

The hostile registry with a certificate of the test CA: the registry and its token realm
speak TLS, storage plain HTTP (another origin, where a test points what must not carry a
secret). The Docker config's password goes to the token realm the registry names, as
Docker's does, but never in clear text when the registry itself was reached over https.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from faultserver.hostile_registry import HostileRegistry
from tests.integration.conftest import PKI
from tests.integration.test_hostile import run_cli_tagged
from tests.integration.test_pull_hostile import (
    DOCKER_BASIC,
    DOCKER_PASSWORD,
    DOCKER_USER,
    NO_PROXIES,
    USER_AUTH,
    docker_config,
    one_error_line,
    patched_env,
    rule,
    script,
    store_problems,
)
from tests.strategies import REGISTRY_REPO, REGISTRY_TAG

CREDENTIALS = f"{DOCKER_USER}:{DOCKER_PASSWORD}"
SCOPE = f'service="hostile",scope="repository:{REGISTRY_REPO}:pull"'


@pytest.fixture(scope="module")
def tls_hostile(pki: PKI) -> Iterator[HostileRegistry]:
    handle = HostileRegistry(tls=(pki.server_cert, pki.server_key))
    yield handle
    handle.stop()


def pull_over_tls(
    hostile: HostileRegistry, pki: PKI, tmp_path: Path, credentials: str | None
) -> tuple[Any, Path]:
    """``blobdl pull 127.0.0.1:PORT/...`` (https: no scheme given) trusting the test CA,
    with the Docker config holding ``credentials`` for the registry, if any."""
    models, work = tmp_path / "models", tmp_path / "work"
    work.mkdir(exist_ok=True)
    reference = f"127.0.0.1:{hostile.ports['registry']}/{REGISTRY_REPO}:{REGISTRY_TAG}"
    config = docker_config(tmp_path, hostile.ports["registry"], credentials)
    with patched_env(**NO_PROXIES, DOCKER_CONFIG=config):
        run = run_cli_tagged(["pull", reference, "--models-dir", str(models), "-q",
                              "--ca-bundle", pki.ca_pem, "-H", f"Authorization: {USER_AUTH}",
                              "--retries", "1", "--max-backoff", "0.01"], work)  # fmt: skip
    return run, models


def seen_at(hostile: HostileRegistry, role: str) -> list[dict[str, Any]]:
    return [e for e in hostile.log() if e["role"] == role]


def secrets_in(entries: list[dict[str, Any]]) -> list[str]:
    text = json.dumps(entries)
    return [s for s in (DOCKER_PASSWORD, DOCKER_BASIC, USER_AUTH, "token-secret") if s in text]


def plain_realm(hostile: HostileRegistry) -> dict[str, object]:
    """The registry's 401 names a token realm on plain HTTP (storage's origin), which
    serves a token there too."""
    realm = f"{hostile.origin('storage')}/token"
    challenge = f'Bearer realm="{realm}",{SCOPE}'
    return rule("registry", "manifests", status=401, headers={"WWW-Authenticate": challenge},
                times=1)  # fmt: skip


def token_there() -> dict[str, object]:
    return rule("storage", "/token", status=200, body=json.dumps({"token": "token-secret-1"}))


def test_the_password_goes_to_an_https_realm_and_nothing_to_plain_http_storage(
    tls_hostile: HostileRegistry, pki: PKI, tmp_path: Path
) -> None:
    """The baseline: realm and registry over TLS get what they should; blobs redirected to
    plain HTTP storage carry no credential of any kind."""
    tls_hostile.load(script(auth="bearer", credentials=CREDENTIALS, redirect=True))
    run, models = pull_over_tls(tls_hostile, pki, tmp_path, CREDENTIALS)
    assert run.code == 0, run.stderr
    assert not store_problems(models)
    realm = seen_at(tls_hostile, "auth")
    assert realm and all(e["headers"].get("Authorization") == DOCKER_BASIC for e in realm)
    storage = seen_at(tls_hostile, "storage")
    assert storage, "no blob was redirected to storage: this test shows nothing"
    assert secrets_in(storage) == []


def test_a_plain_http_realm_of_an_https_registry_never_gets_the_password(
    tls_hostile: HostileRegistry, pki: PKI, tmp_path: Path
) -> None:
    """An https registry answering 401 with ``Bearer realm="http://..."``: the Docker
    config's password went there in clear text. Refused, one line naming the realm,
    before any request to it."""
    tls_hostile.load(script(auth="bearer", credentials=CREDENTIALS,
                            faults=[plain_realm(tls_hostile), token_there()]))  # fmt: skip
    run, models = pull_over_tls(tls_hostile, pki, tmp_path, CREDENTIALS)
    line = one_error_line(run)
    assert f"{tls_hostile.origin('storage')}/token" in line and "clear text" in line, line
    assert seen_at(tls_hostile, "storage") == []
    assert not (models / "manifests").exists()


def test_a_plain_http_realm_of_an_https_registry_is_asked_without_credentials_when_none(
    tls_hostile: HostileRegistry, pki: PKI, tmp_path: Path
) -> None:
    """With no password for the registry nothing secret would go: the token is asked for
    anonymously, as Docker does (a registry behind a TLS proxy often names its realm
    http://), and the pull goes on; the user's Authorization stays with the registry."""
    tls_hostile.load(script(auth="bearer", faults=[plain_realm(tls_hostile), token_there()]))
    run, models = pull_over_tls(tls_hostile, pki, tmp_path, None)
    assert run.code == 0, run.stderr
    assert not store_problems(models)
    asked = seen_at(tls_hostile, "storage")
    assert [e["path"].partition("?")[0] for e in asked] == ["/token"]
    assert secrets_in(asked) == []


def test_an_https_realm_redirecting_to_plain_http_sends_it_no_password(
    tls_hostile: HostileRegistry, pki: PKI, tmp_path: Path
) -> None:
    """The realm over TLS sends the token request on to plain HTTP: the password stays
    with the realm (another origin: another scheme and port)."""
    onwards = rule("auth", "", status=307,
                   headers={"Location": f"{tls_hostile.origin('storage')}/token"})  # fmt: skip
    tls_hostile.load(script(auth="bearer", credentials=CREDENTIALS, faults=[onwards]))
    pull_over_tls(tls_hostile, pki, tmp_path, CREDENTIALS)  # the outcome is not the point
    asked = seen_at(tls_hostile, "storage")
    assert asked, "the realm's redirect was not followed: this test shows nothing"
    assert secrets_in(asked) == []
