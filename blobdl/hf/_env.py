"""Where huggingface_hub's conventions put things: the Hub, the cache, the token.

Read from an environment mapping (``os.environ`` by default) the way huggingface_hub 2.x reads
its own (``constants.py``, ``utils/_auth.py``), so that blobdl and the libraries that load
models agree on every path and on which token is sent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

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


def token(given: str | None = None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The token to send: ``given``, else (unless ``$HF_HUB_DISABLE_IMPLICIT_TOKEN``)
    ``$HF_TOKEN``, the legacy ``$HUGGING_FACE_HUB_TOKEN``, then the file at
    ``$HF_TOKEN_PATH`` (default ``$HF_HOME/token``); each stripped of spaces and newlines."""
    if given is not None:
        return _checked(_clean(given))
    if environ.get("HF_HUB_DISABLE_IMPLICIT_TOKEN", "").upper() in _TRUE:
        return None
    found = _clean(environ.get("HF_TOKEN") or environ.get("HUGGING_FACE_HUB_TOKEN"))
    if found is None:
        found = _clean(_read_token_file(token_path(environ)))
    return _checked(found)


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


def _checked(value: str | None) -> str | None:
    """A token goes in a header: one that cannot is a usage error (never echoed back)."""
    if value is not None:
        try:
            check_header("Authorization", f"Bearer {value}")
        except UsageError:
            raise UsageError("the token has characters a header cannot carry") from None
    return value


def _expanded(path: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(path)))
