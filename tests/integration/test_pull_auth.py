"""``blobdl pull``'s authentication flow against the hostile registry: every answer ends in
the blobs (checked by their sha256) or one clear line, in a bounded number of requests.

The registry's 401 loop, realms that are no URL, token answers with odd lifetimes, and the
Docker config's credentials as Docker reads them (an exact key first, a credential helper
named rather than taken for no credentials at all).
"""

from __future__ import annotations

import base64
import collections
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from faultserver.hostile_registry import HostileRegistry
from tests.integration.test_pull_hostile import (
    DOCKER_PASSWORD,
    DOCKER_USER,
    USER_AUTH,
    one_error_line,
    pull_from,
    rule,
    script,
    store_problems,
)
from tests.integration.test_pull_secrets import CREDENTIALS, SCOPE


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileRegistry]:
    handle = HostileRegistry()
    yield handle
    handle.stop()


def challenge(realm: str) -> dict[str, str]:
    return {"WWW-Authenticate": f'Bearer realm="{realm}",{SCOPE}'}


def requests_by_role(hostile: HostileRegistry) -> dict[str, int]:
    return dict(collections.Counter(entry["role"] for entry in hostile.log()))


def config_folder(tmp_path: Path, config: dict[str, Any]) -> str:
    folder = tmp_path / "docker"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def entry(credentials: str) -> dict[str, str]:
    return {"auth": base64.b64encode(credentials.encode()).decode()}


# --- the registry keeps answering 401 ----------------------------------------------------------


def test_a_token_the_registry_keeps_refusing_is_one_line_after_one_token(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    """The token server gives a token, the registry answers 401 to it and to everything:
    one token, two manifest requests, then one line that names the registry and says the
    token was refused; with no credentials, that the repository is private or absent (as
    Docker says: "repository does not exist or may require 'docker login'")."""
    realm = f"{hostile.origin('auth')}/token"
    hostile.load(script(faults=[rule("registry", "", status=401, headers=challenge(realm))]))
    run, models = pull_from(hostile, tmp_path)
    line = one_error_line(run)
    assert requests_by_role(hostile) == {"registry": 2, "auth": 1}
    host = f"127.0.0.1:{hostile.ports['registry']}"
    assert f"the registry refused the token from 127.0.0.1:{hostile.ports['auth']}" in line
    assert f"no credentials for {host} in the Docker config" in line, line
    assert "private or does not exist" in line, line
    assert not (models / "manifests").exists()


def test_a_token_for_the_docker_credentials_the_registry_refuses_says_so(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    realm = f"{hostile.origin('auth')}/token"
    hostile.load(script(faults=[rule("registry", "", status=401, headers=challenge(realm))],
                        credentials=CREDENTIALS))  # fmt: skip
    host = f"127.0.0.1:{hostile.ports['registry']}"
    config = config_folder(tmp_path, {"auths": {host: entry(CREDENTIALS)}})
    run, _ = pull_from(hostile, tmp_path, DOCKER_CONFIG=config)
    line = one_error_line(run)
    assert requests_by_role(hostile) == {"registry": 2, "auth": 1}
    assert "refused the token" in line and f"the Docker config's credentials for {host}" in line


def test_basic_credentials_the_registry_keeps_refusing_are_one_line(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    hostile.load(script(auth="basic", credentials="alice:another-password"))
    host = f"127.0.0.1:{hostile.ports['registry']}"
    config = config_folder(tmp_path, {"auths": {host: entry(CREDENTIALS)}})
    run, _ = pull_from(hostile, tmp_path, DOCKER_CONFIG=config)
    line = one_error_line(run)
    assert requests_by_role(hostile) == {"registry": 2}
    assert f"the registry refused the Docker config's credentials for {host}" in line, line


# --- realms ------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["{host}/token", "/token", "token"],
                         ids=["no scheme", "a path", "a relative path"])  # fmt: skip
def test_a_realm_that_is_no_absolute_url_is_refused_before_anything_is_sent_to_it(
    hostile: HostileRegistry, tmp_path: Path, form: str
) -> None:
    """Docker and Ollama read a realm as a URL of its own (Go's url.Parse): without a scheme
    it is no place to ask. Read against the manifest's URL, ``127.0.0.1:PORT/token`` became
    a path under ``/v2/…/manifests/``, and the pull ended in a 404 from there."""
    realm = form.format(host=f"127.0.0.1:{hostile.ports['auth']}")
    hostile.load(script(faults=[rule("registry", "manifests", status=401,
                                     headers=challenge(realm))]))  # fmt: skip
    run, _ = pull_from(hostile, tmp_path)
    line = one_error_line(run)
    assert requests_by_role(hostile) == {"registry": 1}
    assert f"token realm {realm!r}" in line and "absolute" in line, line


# --- token answers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        '{"token": "token-secret-1", "expires_in": 0}',
        '{"token": "token-secret-1", "expires_in": -5}',
        '{"token": "token-secret-1", "expires_in": 99999999999999999999999}',
        '{"token": "token-secret-1", "expires_in": "soon"}',
        '{"token": "token-secret-1", "issued_at": "2999-01-01T00:00:00Z"}',
        '{"token": "token-secret-1", "access_token": "another"}',
        '{"access_token": "token-secret-1"}',
    ],
    ids=["expires_in 0", "expires_in < 0", "expires_in huge", "expires_in a string",
         "issued in the future", "token and access_token differ", "only access_token"],
)  # fmt: skip
def test_a_token_answer_is_used_until_the_registry_refuses_it_whatever_its_lifetime(
    hostile: HostileRegistry, tmp_path: Path, answer: str
) -> None:
    """A lifetime is the server's guess, not ours to act on (Ollama reads none): the token
    is kept until a 401, so no answer makes a pull ask for a token per request. Where
    ``token`` and ``access_token`` differ, ``token`` is the one sent, as Ollama sends it."""
    hostile.load(script(faults=[rule("auth", "", body=answer)], auth="bearer"))
    run, models = pull_from(hostile, tmp_path)
    assert run.code == 0, run.stderr
    assert not store_problems(models)  # every blob's bytes are its digest's
    assert requests_by_role(hostile)["auth"] == 1


# --- the Docker config -------------------------------------------------------------------------


def test_the_exact_key_for_the_registry_wins_over_another_spelling_as_in_docker(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    """Docker looks the registry's host up as a key first, and only then reads other
    spellings (``http://host``, ``https://host/v1/``) as a host."""
    hostile.load(script(auth="basic", credentials=CREDENTIALS))
    host = f"127.0.0.1:{hostile.ports['registry']}"
    auths = {f"http://{host}": entry("alice:stale-password"), host: entry(CREDENTIALS)}
    run, models = pull_from(
        hostile, tmp_path, DOCKER_CONFIG=config_folder(tmp_path, {"auths": auths})
    )
    assert run.code == 0, run.stderr
    assert not store_problems(models)
    basic = "Basic " + base64.b64encode(CREDENTIALS.encode()).decode()
    sent = {e["headers"].get("Authorization") for e in hostile.log() if e["role"] == "registry"}
    assert sent == {None, basic}


@pytest.mark.parametrize(
    "config",
    [
        {"credsStore": "desktop", "auths": {"{host}": {}}},
        {"credHelpers": {"{host}": "ecr-login"}},
    ],
    ids=["credsStore", "credHelpers"],
)
def test_credentials_kept_by_a_credential_helper_are_named_not_taken_for_none(
    hostile: HostileRegistry, tmp_path: Path, config: dict[str, Any]
) -> None:
    """Docker Desktop keeps the password in a helper and leaves ``auths.<host>`` empty:
    "no credentials for HOST in the Docker config" sent the user to a file that names the
    host. The line says which helper holds them, and that blobdl does not run helpers."""
    hostile.load(script(auth="basic", credentials=CREDENTIALS))
    host = f"127.0.0.1:{hostile.ports['registry']}"
    folder = config_folder(tmp_path, json.loads(json.dumps(config).replace("{host}", host)))
    run, _ = pull_from(hostile, tmp_path, DOCKER_CONFIG=folder)
    line = one_error_line(run)
    helper = "desktop" if "credsStore" in config else "ecr-login"
    assert f"credential helper {helper!r}" in line and "does not support" in line, line


# --- a registry or token server echoing a credential in its words -------------------------------


def test_a_registry_echoing_its_token_or_the_users_header_never_gets_them_shown(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    """The registry's refusal is shown in its words: one that echoes the token it refused
    and the Authorization the user gave had both printed on the error line."""
    says = "token token-secret-1 (and Bearer user-secret-20) may not pull"
    body = json.dumps({"errors": [{"code": "DENIED", "message": says}]})
    refusal = rule("registry", "manifests", status=403, body=body, skip=1)
    hostile.load(script(auth="bearer", faults=[refusal]))
    run, _ = pull_from(hostile, tmp_path, "-H", f"Authorization: {USER_AUTH}")
    line = one_error_line(run)
    assert "may not pull" in line, line
    assert "token-secret-1" not in line and "user-secret-20" not in line, line


def test_a_token_server_echoing_the_docker_password_never_gets_it_shown(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    body = json.dumps({"details": f"password {DOCKER_PASSWORD} is wrong for {DOCKER_USER}"})
    hostile.load(script(auth="bearer", credentials=CREDENTIALS,
                        faults=[rule("auth", "", status=401, body=body)]))  # fmt: skip
    config = config_folder(tmp_path, {"auths": {f"127.0.0.1:{hostile.ports['registry']}":
                                                entry(CREDENTIALS)}})  # fmt: skip
    run, _ = pull_from(hostile, tmp_path, DOCKER_CONFIG=config)
    line = one_error_line(run)
    assert "is wrong for" in line, line
    assert DOCKER_PASSWORD not in line, line
