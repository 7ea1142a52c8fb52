"""The Docker config's credentials for a registry: ``auths.<host>`` in
``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json`` (credential helpers are not
supported: one that holds a registry's credentials is named when they are missing).

A config that cannot be read, is not JSON or holds wrong types is a warning, and the pull
goes on without credentials, as Docker goes on ("WARNING: Error loading config file"); Ollama
never reads it at all. Stopping would fail a public pull for a file it does not need; if the
registry then asks for credentials, the error line names the config and what is wrong with it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ._schema import Fail, Opt, check, parse_json

log = logging.getLogger("blobdl")
_ENTRY = {"auth": Opt(str), "username": Opt(str), "password": Opt(str)}
_CONFIG = {"auths": Opt(dict), "credsStore": Opt(str), "credHelpers": Opt(dict)}


class _Broken(UsageError):
    """The Docker config at ``path`` cannot be used: ``problem`` says why."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(path, problem)
        self.path, self.problem = path, problem


def docker_credentials(host: str) -> tuple[str, str] | None:
    """(user, password) for ``host`` (``host[:port]``), or None (a broken config: warned)."""
    try:
        return _credentials_in(_read(), host)
    except _Broken as broken:
        log.warning("Docker config %s: %s; its credentials are not used",
                    broken.path, broken.problem)  # fmt: skip
        return None


def _credentials_in(found: tuple[dict[str, Any], Fail] | None, host: str) -> tuple[str, str] | None:
    """``host``'s credentials in the config ``_read`` found (None: no file)."""
    if found is None:
        return None
    doc, fail = found
    key = _key_for(doc["auths"] or {}, host)
    if key is None:
        return None
    return _decode(check(doc["auths"][key], _ENTRY, f"auths[{key!r}]", fail), fail)


def no_credentials(host: str) -> str:
    """Why ``docker_credentials(host)`` is None, for an error line: a credential helper
    (``credHelpers.<host>``, else ``credsStore``) holds them, the config could not be used,
    or it has none."""
    try:
        found = _read()
        _credentials_in(found, host)  # an entry that cannot be used breaks it too
    except _Broken as broken:
        return (f"no credentials for {host}: the Docker config {broken.path} could not be "
                f"used ({broken.problem})")  # fmt: skip
    doc = found[0] if found is not None else {}
    helpers = doc.get("credHelpers") or {}
    key = _key_for(helpers, host)
    helper = helpers[key] if key is not None else doc.get("credsStore")
    if isinstance(helper, str) and helper:
        return (
            f"the Docker config leaves the credentials for {host} to the credential helper "
            f"{helper!r} (credsStore, credHelpers), which blobdl does not support: put them "
            f"in auths"
        )
    return f"no credentials for {host} in the Docker config"


def _read() -> tuple[dict[str, Any], Fail] | None:
    """The config's checked top level and the error its path makes, or None (no file)."""
    folder = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    path = Path(folder) / "config.json"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _Broken(path, f"cannot be read: {exc.strerror}") from None

    def fail(message: str) -> UsageError:
        return _Broken(path, message)

    return check(parse_json(raw, "the file", fail), _CONFIG, "the file", fail), fail


def _key_for(table: dict[str, Any], host: str) -> str | None:
    """The key of ``table`` naming ``host``: the host itself first, as Docker looks it up,
    then the first written another way (``https://host/v1/``)."""
    if host in table:
        return host
    return next((key for key in table if _config_host(key) == host.lower()), None)


def _config_host(key: str) -> str:
    """``https://host:port/v1/`` -> ``host:port``: keys are written both ways."""
    return key.split("://", 1)[-1].split("/", 1)[0].lower()


def _decode(entry: dict[str, str | None], fail: Fail) -> tuple[str, str] | None:
    if entry["auth"]:
        try:
            user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            sep = ""
        if not sep:
            raise fail("an 'auth' that is not base64 user:password")
        return user, password
    if entry["username"] is not None:
        return entry["username"], entry["password"] or ""
    return None


def basic(credentials: tuple[str, str]) -> str:
    """The ``Authorization`` value for ``credentials`` (base64: any character will do)."""
    return "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
