"""Where huggingface_hub's conventions put things: the Hub, the cache, the token.

Read from an environment mapping (``os.environ`` by default) the way huggingface_hub 2.x reads
its own (``constants.py``, ``utils/_auth.py``), so that blobdl and the libraries that load
models agree on every path and on which token is sent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from ..config import check_header
from ..errors import UsageError
from ..http._urls import check_url

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = frozenset({"1", "ON", "YES", "TRUE"})


def endpoint(environ: Mapping[str, str] = os.environ, given: str | None = None) -> str:
    """The Hub: ``given``, else ``$HF_ENDPOINT``, else huggingface.co (no trailing ``/``)."""
    url = (given or environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    check_url(url)
    return url


def offline(environ: Mapping[str, str] = os.environ) -> str | None:
    """The variable that puts huggingface_hub offline, or None: ``$HF_HUB_OFFLINE``, else
    (unset or empty) ``$TRANSFORMERS_OFFLINE``, on when ``1``, ``ON``, ``YES`` or ``TRUE``
    in any case and nothing else (``0``, ``false``, `` 1`` are off), as ``constants.py``
    reads it: a job that sets it for its readers means no request to the Hub at all."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = environ.get(name)
        if value:
            return name if value.upper() in _TRUE else None
    return None


# The folders below are read as huggingface_hub reads them, ``os.getenv(name, default)``: a
# variable set empty counts (``HF_HOME=`` is ``./hub``), for transformers looks there too.


def hf_home(environ: Mapping[str, str] = os.environ) -> Path:
    """``$HF_HOME``, else ``$XDG_CACHE_HOME/huggingface``, else ``~/.cache/huggingface``."""
    xdg = environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return _expanded(environ.get("HF_HOME", os.path.join(xdg, "huggingface")))


def hub_cache(environ: Mapping[str, str] = os.environ) -> Path:
    """``$HF_HUB_CACHE``, else the legacy ``$HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``."""
    given = environ.get("HF_HUB_CACHE", environ.get("HUGGINGFACE_HUB_CACHE"))
    return _expanded(given) if given is not None else hf_home(environ) / "hub"


class Token(NamedTuple):
    """The token to send, and where it came from: a refusal names that place (never the
    token), and says how to put a valid one there."""

    value: str
    source: str  # "--token", "$HF_TOKEN", "$HUGGING_FACE_HUB_TOKEN", "the token file PATH"

    @property
    def renew(self) -> str:
        """What to do where it came from, once the Hub refuses it."""
        if self.source == "--token":
            return "give a valid one with --token"
        if self.source.startswith("$"):
            return f"set a valid one in {self.source}"
        return "log in again with `hf auth login`"  # which writes the file it came from


def token(given: str | None = None, environ: Mapping[str, str] = os.environ) -> Token | None:
    """The token to send: ``given``, else (unless ``$HF_HUB_DISABLE_IMPLICIT_TOKEN``)
    ``$HF_TOKEN``, the legacy ``$HUGGING_FACE_HUB_TOKEN``, then the file at
    ``$HF_TOKEN_PATH`` (default ``$HF_HOME/token``); each stripped of spaces and newlines."""
    if given is not None:
        return _checked(_clean(given), "--token")
    if environ.get("HF_HUB_DISABLE_IMPLICIT_TOKEN", "").upper() in _TRUE:
        return None
    # As huggingface_hub reads them (`HF_TOKEN or HUGGING_FACE_HUB_TOKEN`, then cleaned): a
    # $HF_TOKEN of spaces hides the legacy variable, and the file is read instead.
    name = "HF_TOKEN" if environ.get("HF_TOKEN") else "HUGGING_FACE_HUB_TOKEN"
    found = _clean(environ.get(name))
    if found is not None:
        return _checked(found, f"${name}")
    path = token_path(environ)
    return _checked(_clean(_read_token_file(path)), f"the token file {path}")


def token_path(environ: Mapping[str, str] = os.environ) -> Path:
    given = environ.get("HF_TOKEN_PATH")
    return _expanded(given) if given is not None else hf_home(environ) / "token"


def _read_token_file(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the token file {path}: {exc}") from None


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    return value.replace("\r", "").replace("\n", "").strip() or None


def _checked(value: str | None, source: str) -> Token | None:
    """A token goes in a header: one that cannot is a usage error (never echoed back)."""
    if value is None:
        return None
    try:
        check_header("Authorization", f"Bearer {value}")
    except UsageError:
        raise UsageError("the token has characters a header cannot carry") from None
    return Token(value, source)


def _expanded(path: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(path)))
