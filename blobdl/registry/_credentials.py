"""The Docker config's credentials for a registry: ``auths.<host>`` in
``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json`` (credential helpers are not
supported). A file that cannot be read, or holds wrong types, is a usage error naming it.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from ..errors import UsageError
from ._schema import Fail, Opt, check, parse_json

_ENTRY = {"auth": Opt(str), "username": Opt(str), "password": Opt(str)}


def docker_credentials(host: str) -> tuple[str, str] | None:
    """(user, password) for ``host`` (``host[:port]``), or None."""
    folder = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    path = Path(folder) / "config.json"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot read Docker config {path}: {exc.strerror}") from None

    def fail(message: str) -> UsageError:
        return UsageError(f"Docker config {path}: {message}")

    doc = check(parse_json(raw, "the file", fail), {"auths": Opt(dict)}, "the file", fail)
    for key, entry in (doc["auths"] or {}).items():
        if _config_host(key) == host.lower():
            return _decode(check(entry, _ENTRY, f"auths[{key!r}]", fail), fail)
    return None


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
