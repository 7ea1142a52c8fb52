"""Model references, read exactly as ``ollama pull`` reads them, plus one extension of ours.

Ollama's rules (``types/model/name.go``, ``internal/modelref``; the machine-checked table is
``/work/shared/notes/ollama.md`` §9, pinned by ``tests/unit/test_names.py``):

- surrounding white space is trimmed; ``:cloud``/``:local`` suffixes are normalised
  (``m:20b:cloud`` is ``m:20b-cloud``, ``m:local`` is ``m``);
- the text is split right to left: a tag after the last ``:`` if it follows the last ``/``,
  then at most three ``/``-parts, HOST/NAMESPACE/MODEL, NAMESPACE/MODEL or MODEL; a
  ``scheme://`` prefix only on three parts;
- each part has its alphabet and length (``PARTS``); the default host, ``library`` and
  ``latest`` fill what is left out;
- a host that is the default host (in any case) is written in lowercase, and on it so is a
  ``library`` namespace; every other part keeps the case typed, or (``adopt_case``) the
  case of a model already in the store.

Our extension: ``MODEL[:TAG]@sha256:<64 hex>`` pins the manifest by digest (Ollama's names
have no ``@`` any more). It is stored under the tag given, else under ``sha256-<hex>``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import NamedTuple

from ..config import check_text
from ..errors import UsageError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MISSING = "!MISSING!"  # a part a separator promised but that is empty: never valid

# What Go's strings.TrimSpace removes (unicode.IsSpace); str.strip() would also take \x1c-\x1f.
GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000")
)
_PIN = re.compile(r"sha256:([0-9a-f]{64})")
_SCHEME = re.compile(r"[^:/@]*://")
_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


class Part(NamedTuple):
    kind: str
    others: frozenset[str]  # what may follow the first character
    longest: int  # bytes


PARTS = (
    Part("host", _FIRST | frozenset("-.:"), 350),
    Part("namespace", _FIRST | frozenset("-"), 80),
    Part("model", _FIRST | frozenset("-."), 80),
    Part("tag", _FIRST | frozenset("-."), 80),
)


@dataclasses.dataclass(frozen=True)
class Reference:
    scheme: str  # "http" if the reference said http://, else "https"
    host: str  # host[:port]: the manifest directory's first name
    namespace: str
    model: str
    tag: str  # the tag the manifest is stored under
    digest: str | None  # sha256 hex when the reference pins the manifest (our extension)

    @property
    def parts(self) -> tuple[str, str, str, str]:
        """host, namespace, model, tag: the manifest's path under ``manifests/``."""
        return (self.host, self.namespace, self.model, self.tag)

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
    """``text`` as ``ollama pull`` reads it (see the module's docstring); a name Ollama
    refuses is a ``UsageError`` saying why."""
    check_text("model reference", text)
    raw = text.strip(GO_SPACE)
    name, at, pin = raw.partition("@")
    if "/" in pin:  # user[:password]@host/...: refused before the text is echoed anywhere
        raise UsageError(f"invalid model reference {_without_credentials(text)!r}: credentials "
                         "do not go in a reference (a registry's come from the Docker config, "
                         "auths.<host>)")  # fmt: skip
    digest = _digest(pin, text) if at else None
    normalized = _normalize(name.strip(GO_SPACE), text)
    scheme, parts = _split(normalized)
    if digest and not has_explicit_tag(normalized):
        parts[3] = f"sha256-{digest}"
    filled = [part or default for part, default in zip(parts, _DEFAULTS, strict=True)]
    for part, value in zip(PARTS, filled, strict=True):
        problem = part_problem(part, value)
        if problem:
            raise UsageError(f"invalid model reference {text!r}: {_explain(problem, normalized)}")
    host, namespace, model, tag = fold(*filled)
    return Reference(scheme, host, namespace, model, tag, digest)


_DEFAULTS = (DEFAULT_HOST, DEFAULT_NAMESPACE, "", DEFAULT_TAG)


def require_reachable(ref: Reference) -> None:
    """A name Ollama accepts may still name no registry one can reach: the host's part
    after a ``:`` must be a port (``host:https/ns/m`` is a valid name; Ollama's request then
    fails, and ours is refused before it is made)."""
    name, colon, port = ref.host.rpartition(":")
    if colon and not (":" not in name and port.isdigit() and 0 < int(port) < 65536):
        raise UsageError(f"no registry can be reached at {ref.host!r} ({str(ref)!r} is a valid "
                         "name, but its host's port is not a number from 1 to 65535)")  # fmt: skip


def _without_credentials(text: str) -> str:
    """``text`` with what comes before the host's ``@`` (the last ``@`` a ``/`` follows),
    past any ``scheme://``, replaced by ``***``: a password may hold ``@`` or ``/``."""
    scheme = _SCHEME.match(text)
    start = scheme.end() if scheme else 0
    cut = max(i for i, c in enumerate(text) if c == "@" and "/" in text[i + 1 :])
    return text[:start] + "***" + text[cut:]


def _digest(pin: str, text: str) -> str:
    match = _PIN.fullmatch(pin.strip(GO_SPACE).lower())
    if not match:
        raise UsageError(
            f"invalid model reference {text!r}: a pin is @sha256:<64 hex digits> (our extension)"
        )
    return match.group(1)


def _normalize(raw: str, text: str) -> str:
    """``modelref.NormalizePullName``: ``:cloud``/``:local`` suffixes."""
    if not raw:
        raise UsageError(f"invalid model reference {text!r}: the model is required")
    base, source = _source_suffix(raw)
    if source and _source_suffix(base)[1]:
        raise UsageError(f"invalid model reference {text!r}: use either :local or :cloud, not both")
    if source != "cloud":
        return base
    return base + ("-cloud" if has_explicit_tag(base) else ":cloud")


def _source_suffix(raw: str) -> tuple[str, str]:
    """``modelref.parseSourceSuffix``: the base and "cloud", "local" or ""."""
    index = raw.rfind(":")
    if index < 0:
        return raw, ""
    suffix = raw[index + 1 :].strip(GO_SPACE)
    lower = suffix.lower()
    if lower in ("cloud", "local"):
        return raw[:index], lower
    if "/" not in suffix and lower.endswith("-cloud"):
        return raw[: index + 1] + suffix[: -len("-cloud")], "cloud"
    return raw, ""


def has_explicit_tag(name: str) -> bool:
    """A ``:`` after the last ``/`` (a host's port does not count)."""
    return name.rfind(":") > name.rfind("/")


def _split(name: str) -> tuple[str, list[str]]:
    """``ParseNameBare``: the scheme and [host, namespace, model, tag], "" where not given."""
    tag = ""
    if has_explicit_tag(name):
        name, tag = _cut(name, ":")
    if "/" not in name:
        return "https", ["", "", name, tag]
    rest, model = _cut(name, "/")
    if "/" not in rest:
        return "https", ["", rest, model, tag]
    host, namespace = _cut(rest, "/")
    scheme, sep, after = host.partition("://")
    if sep:
        host = after
    # Ollama keeps the scheme's text and then drops it; http:// is how we reach a plain
    # HTTP registry, anything else is https.
    return ("http" if sep and scheme.lower() == "http" else "https"), [host, namespace, model, tag]


def _cut(text: str, sep: str) -> tuple[str, str]:
    before, _, after = text.rpartition(sep)
    return before or MISSING, after or MISSING


def part_problem(part: Part, value: str) -> str | None:
    """Why ``value`` is not a valid ``part`` (``isValidPart``), or None."""
    if value == MISSING or not value:
        return f"the {part.kind} is empty"
    if value[0] not in _FIRST:
        return f"the {part.kind} {value!r} must start with a letter, a digit or '_'"
    bad = next((c for c in value[1:] if c not in part.others), None)
    if bad is not None:
        return f"the {part.kind} {value!r} may not contain {bad!r}"
    if len(value.encode()) > part.longest:
        return f"the {part.kind} is {len(value.encode())} bytes long (at most {part.longest})"
    return None


def _explain(problem: str, name: str) -> str:
    """A hint where the likely mistake is the number of parts."""
    if "://" in name and name.count("/") < 4:
        return f"{problem} (a scheme:// goes only before HOST/NAMESPACE/MODEL)"
    if problem.startswith("the host") and "'/'" in problem:
        return "too many '/' (at most HOST/NAMESPACE/MODEL[:TAG])"
    if problem.startswith("the namespace") and ("'.'" in problem or "':'" in problem):
        return f"{problem} (two parts are NAMESPACE/MODEL: write HOST/NAMESPACE/MODEL)"
    return problem


def fold(host: str, namespace: str, model: str, tag: str) -> tuple[str, str, str, str]:
    """The default host and, on it, the ``library`` namespace in lowercase, as Ollama's
    ``ParseName(name.DisplayShortest())`` leaves them; every other part as it is."""
    if host.lower() == DEFAULT_HOST:
        host = DEFAULT_HOST
        if namespace.lower() == DEFAULT_NAMESPACE:
            namespace = DEFAULT_NAMESPACE
    return host, namespace, model, tag


def valid_name(parts: tuple[str, ...]) -> bool:
    """A manifest path's four parts as ``ParseNameFromFilepath`` + ``IsValid`` judge them."""
    if len(parts) != len(PARTS):
        return False
    return all(part_problem(p, v) is None for p, v in zip(PARTS, parts, strict=True))


def adopt_case(ref: Reference, existing: Iterable[tuple[str, str, str, str]]) -> Reference:
    """Each part of ``ref`` spelled as the store already spells it (Ollama's
    ``getExistingName``): a part equal but for case to the same part of a model in the store
    takes that model's spelling, so ``LOCALHOST:5000/…`` and ``localhost:5000/…`` are one
    model. Ollama matches each part against any model and, when several spellings exist,
    takes one at random; ours is deterministic: the spelling of the model that matches the
    most parts, then the spelling typed, then the first model path in sort order."""
    typed = ref.parts
    lowered = tuple(p.lower() for p in typed)
    models = sorted(set(existing))

    def rank(model: tuple[str, ...], index: int) -> tuple[int, bool, tuple[str, ...]]:
        score = sum(m.lower() == t for m, t in zip(model, lowered, strict=True))
        return (-score, model[index] != typed[index], model)

    parts = list(typed)
    for index in range(len(parts)):
        same = [m for m in models if m[index].lower() == lowered[index]]
        if same:
            parts[index] = min(same, key=lambda m: rank(m, index))[index]
    host, namespace, model, tag = fold(*parts)
    return dataclasses.replace(ref, host=host, namespace=namespace, model=model, tag=tag)
