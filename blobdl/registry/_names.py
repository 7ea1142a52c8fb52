"""Model references as Ollama writes them: ``[scheme://][HOST[:PORT]/][NS/]MODEL[:TAG|@DIGEST]``.

Split as Ollama splits them: three path parts are host/namespace/model, two are
namespace/model, one is the model. Every part is checked against a strict pattern, so a
reference can never name a path outside the store (no ``..``, no ``/`` inside a part).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# A DNS name or IPv4 address, or a bracketed IPv6 address, with an optional port.
_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$"
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")  # namespace and model
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


@dataclass(frozen=True)
class Reference:
    scheme: str  # "https" unless the reference said http://
    host: str  # host[:port], as written (the manifest directory's name)
    namespace: str
    model: str
    tag: str  # the tag the manifest is stored under
    digest: str | None  # sha256 hex when the reference pins the manifest

    @property
    def repository(self) -> str:
        return f"{self.namespace}/{self.model}"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def manifest_reference(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        return f"sha256:{self.digest}" if self.digest else self.tag

    def __str__(self) -> str:
        pin = f"@sha256:{self.digest}" if self.digest else ""
        return f"{self.host}/{self.repository}:{self.tag}{pin}"


def parse_reference(text: str) -> Reference:
    """Parse ``text``; a digest-pinned reference without a tag is stored under the tag
    ``sha256-<hex>`` (Ollama's tag alphabet has no ``:``)."""
    scheme, rest = "https", text.strip()
    for prefix in ("https://", "http://"):
        if rest.lower().startswith(prefix):
            scheme, rest = prefix[:-3], rest[len(prefix) :]
    rest, digest = _split_digest(rest, text)
    parts = rest.split("/")
    if not 1 <= len(parts) <= 3:
        raise UsageError(f"invalid model reference {text!r}: too many '/'")
    host = parts[0] if len(parts) == 3 else DEFAULT_HOST
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    model, colon, tag = parts[-1].partition(":")
    if not colon:
        tag = f"sha256-{digest}" if digest else DEFAULT_TAG
    _check(_HOST, host, "host", text)
    _check(_NAME, namespace, "namespace", text)
    _check(_NAME, model, "model", text)
    _check(_TAG, tag, "tag", text)
    return Reference(scheme, host, namespace, model, tag, digest)


def _split_digest(rest: str, text: str) -> tuple[str, str | None]:
    name, at, pin = rest.partition("@")
    if not at:
        return rest, None
    match = _DIGEST.match(pin.lower())
    if not match:
        raise UsageError(f"invalid model reference {text!r}: the digest must be sha256:<64 hex>")
    return name, match.group(1)


def _check(pattern: re.Pattern[str], value: str, what: str, text: str) -> None:
    if not pattern.match(value):
        raise UsageError(f"invalid model reference {text!r}: bad {what} {value!r}")
