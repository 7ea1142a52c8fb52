"""Where ``blobdl pull`` and ``ollama pull`` meet a registry that is not the usual one: a
manifest served as plain JSON (a hand-made mirror, a static file server), the registry's
own words in an error answer, storage that keeps refusing, a Docker config that is broken.

Ollama's source decides (``server/images.go``: ``pullModelManifest``, ``makeRequestWithRetry``,
``PullModel``): it decodes the manifest's JSON whatever the ``Content-Type`` or ``mediaType``
say, skips a config with no digest, and prints an error answer's body. Every store is judged
by the hostile tests' Ollama rules (``store_problems``), every blob by its sha256.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from faultserver.hostile_registry import HostileRegistry
from tests.integration.test_pull_hostile import (
    REGISTRY_REPO,
    REGISTRY_TAG,
    fixed_model,
    one_error_line,
    pull_from,
    rule,
    script,
    store_problems,
)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileRegistry]:
    handle = HostileRegistry()
    yield handle
    handle.stop()


def stored(models: Path, hostile: HostileRegistry) -> Path:
    host = f"127.0.0.1:{hostile.ports['registry']}"
    return models / "manifests" / host / REGISTRY_REPO / REGISTRY_TAG


def pulled_as_served(hostile: HostileRegistry, tmp_path: Path, raw: bytes) -> None:
    run, models = pull_from(hostile, tmp_path)
    assert run.code == 0, run.stderr
    assert stored(models, hostile).read_bytes() == raw
    assert not store_problems(models)
    blobs = {p.name for p in (models / "blobs").iterdir()}
    doc = json.loads(raw)
    named = [e["digest"] for e in [doc.get("config") or {}, *doc["layers"]] if e.get("digest")]
    assert blobs == {d.replace(":", "-") for d in named}


# --- manifests Ollama reads whatever their type says ------------------------------------------


def without(doc: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in keys}


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None],
                         ids=["application/json", "text/plain", "no Content-Type"])  # fmt: skip
def test_a_manifest_with_no_media_type_served_as_plain_json_is_pulled(
    hostile: HostileRegistry, tmp_path: Path, content_type: str | None
) -> None:
    """A hand-made mirror or a static file server: no ``mediaType`` field, the file served
    as JSON or as anything. Ollama decodes the JSON whatever the type; so do we."""
    raw = json.dumps(without(fixed_model()[1], "mediaType")).encode()
    headers = {} if content_type is None else {"Content-Type": content_type}
    hostile.load(script(raw, faults=[rule("registry", "manifests", status=200, headers=headers,
                                          body=raw.decode())]))  # fmt: skip
    pulled_as_served(hostile, tmp_path, raw)


@pytest.mark.parametrize(
    "change",
    [
        {"mediaType": "application/vnd.example.model.manifest+json"},
        {"schemaVersion": None},
        {"schemaVersion": 3},
        {"config": None},
        {"config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 0}},
    ],
    ids=["a media type of its own", "no schemaVersion", "schemaVersion 3", "no config",
         "a config with no digest"],
)  # fmt: skip
def test_what_ollama_does_not_check_of_a_manifest_is_not_checked(
    hostile: HostileRegistry, tmp_path: Path, change: dict[str, Any]
) -> None:
    """Ollama checks no media type and no schemaVersion, and fetches a config only when it
    has a digest (``if mf.Config.Digest != ""``): what it pulls, we pull."""
    doc = {**fixed_model()[1], **change}
    raw = json.dumps({k: v for k, v in doc.items() if v is not None}).encode()
    hostile.load(script(raw))
    pulled_as_served(hostile, tmp_path, raw)


def test_a_config_under_a_key_go_does_not_fold_to_config_is_no_config(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    """ "conﬁg" (a ligature) is no field of Ollama's: it reads a model with no config, and
    fetches only the layers; so do we (Python's casefold would have read a config)."""
    raw = json.dumps(fixed_model()[1]).replace('"config"', '"conﬁg"').encode()
    hostile.load(script(raw))
    pulled_as_served(hostile, tmp_path, raw)


def test_a_config_that_is_a_layer_too_is_fetched_once(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    _, doc = fixed_model()
    doc["config"] = {**doc["layers"][0], "mediaType": "application/vnd.ollama.image.model"}
    raw = json.dumps(doc).encode()
    hostile.load(script(raw))
    pulled_as_served(hostile, tmp_path, raw)
    layer = doc["layers"][0]["digest"]
    gets = [e for e in hostile.log() if e["path"].endswith(layer) and "Range" in e["headers"]]
    assert len([e for e in gets if e["headers"]["Range"] != "bytes=0-0"]) >= 1
    assert len([e for e in gets if e["headers"]["Range"] == "bytes=0-0"]) == 1  # one lookup


def index(media_type: bool) -> bytes:
    digest = "sha256:" + hashlib.sha256(json.dumps(fixed_model()[1]).encode()).hexdigest()
    doc = {"schemaVersion": 2, "manifests": [{"digest": digest, "size": 500, "platform": {
        "architecture": "amd64", "os": "linux"}}]}  # fmt: skip
    return json.dumps({**doc, "mediaType": OCI_INDEX} if media_type else doc).encode()


SCHEMA1_DOC = {"schemaVersion": 1, "name": REGISTRY_REPO, "tag": REGISTRY_TAG,
               "architecture": "amd64", "fsLayers": [{"blobSum": fixed_model()[1]["layers"][0]
               ["digest"]}], "history": [{"v1Compatibility": "{}"}]}  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "content_type", "said"),
    [
        (index(False), "application/json", "an index"),
        (index(True), "application/json", "an index"),
        (index(False), OCI_INDEX, "an index"),
        (json.dumps(SCHEMA1_DOC).encode(), SCHEMA1, "schema 1"),
        (json.dumps(SCHEMA1_DOC).encode(), "application/json", "schema 1"),
        (b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}',
         "application/json", "names no blob"),
        (b'{"schemaVersion": 2, "config": {}, "layers": []}', "application/json", "names no blob"),
    ],
    ids=["an index as plain JSON", "an index with its media type, as plain JSON",
         "an index with no media type field", "schema 1", "schema 1 as plain JSON",
         "no config and no layers", "an empty config and no layers"],
)  # fmt: skip
def test_a_document_that_is_no_models_manifest_is_one_line_saying_what_it_is(
    hostile: HostileRegistry, tmp_path: Path, raw: bytes, content_type: str, said: str
) -> None:
    """Ollama would decode these into a model of no blobs and write it: a model in the list
    that cannot run. We say what the document is instead, whatever it is served as."""
    hostile.load(script(raw, content_type=content_type))
    run, models = pull_from(hostile, tmp_path)
    line = one_error_line(run)
    assert run.code == 3 and "unsupported manifest" in line and said in line, line
    assert not (models / "manifests").exists()


# --- the registry's own words ------------------------------------------------------------------


def oci_errors(*errors: tuple[str, str]) -> str:
    return json.dumps({"errors": [{"code": c, "message": m, "detail": {"x": 1}}
                                  for c, m in errors]})  # fmt: skip


DENIED = oci_errors(("DENIED", "requested access to the resource is denied"))
JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("where", "status", "body", "said"),
    [
        ("manifests", 403, DENIED, "HTTP 403: the registry says DENIED: requested access to the "
         "resource is denied"),
        ("manifests", 404, oci_errors(("MANIFEST_UNKNOWN", "manifest unknown")),
         "model not found: 127.0.0.1:{port}/library/hostile:v1 (the registry says "
         "MANIFEST_UNKNOWN: manifest unknown)"),
        ("manifests", 400, oci_errors(("NAME_INVALID", "invalid repository name"),
                                      ("TAG_INVALID", "manifest tag did not match URI")),
         "HTTP 400 from http://127.0.0.1:{port}/v2/library/hostile/manifests/v1: the registry "
         "says NAME_INVALID: invalid repository name; TAG_INVALID: manifest tag did not match"),
        ("manifests", 405, "pulls are off for maintenance", "pulls are off for maintenance"),
        ("blobs", 403, DENIED, "HTTP 403: the registry says DENIED: requested access"),
        ("blobs", 404, oci_errors(("BLOB_UNKNOWN", "blob unknown to registry")),
         ", the registry says BLOB_UNKNOWN: blob unknown to registry)"),
    ],
    ids=["manifest 403", "manifest 404", "manifest 400, two errors", "manifest 405, text",
         "blob lookup 403", "blob lookup 404"],
)  # fmt: skip
def test_an_error_answer_says_the_registrys_own_words(
    hostile: HostileRegistry, tmp_path: Path, where: str, status: int, body: str, said: str
) -> None:
    """Ollama prints an error answer's body ("pull model manifest: 403: {...}"); we print
    what the OCI error body says (each error's code and message), or a short text body."""
    hostile.load(script(faults=[rule("registry", where, status=status, headers=JSON,
                                     body=body)]))  # fmt: skip
    run, models = pull_from(hostile, tmp_path)
    line = one_error_line(run)
    assert said.format(port=hostile.ports["registry"]) in line, line
    assert not (models / "manifests").exists()


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ("<html><body><h1>403 Forbidden</h1>" + "x" * 3000 + "</body></html>",
         {"Content-Type": "text/html"}),
        ('{"errors": 5}', JSON),
        ('{"errors": [{"code": 5}]}', JSON),
        ("[" * 100_000, JSON),
        ("\x1b[2J\nforged line", {"Content-Type": "text/plain"}),
        ("", {}),
    ],
    ids=["an HTML page", "errors not a list", "a code that is no string", "nested deep",
         "a terminal escape and a line break", "no body"],
)  # fmt: skip
def test_an_error_body_that_says_nothing_readable_leaves_the_status_alone(
    hostile: HostileRegistry, tmp_path: Path, body: str, headers: dict[str, str]
) -> None:
    hostile.load(script(faults=[rule("registry", "manifests", status=403, headers=headers,
                                     body=body)]))  # fmt: skip
    run, _ = pull_from(hostile, tmp_path)
    line = one_error_line(run)
    assert run.code == 3 and "HTTP 403" in line and len(line) < 400, line
    assert "<html>" not in line and "\x1b" not in line


def test_a_huge_error_body_is_read_only_as_far_as_its_words_need(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    """50 MB of error answer: read up to a small cap, the connection closed, one short line."""
    hostile.load(script(faults=[rule("registry", "manifests", status=403,
                                     repeat=["denied ", 50 << 20])]))  # fmt: skip
    run, _ = pull_from(hostile, tmp_path)
    line = one_error_line(run)
    assert run.code == 3 and "HTTP 403" in line and len(line) < 400, line


def test_a_token_server_refusal_says_its_own_words(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    realm = f"{hostile.origin('auth')}/token"
    challenge = {"WWW-Authenticate": f'Bearer realm="{realm}",service="hostile"'}
    hostile.load(script(faults=[
        rule("registry", "manifests", status=401, headers=challenge),
        rule("auth", "", status=401, headers=JSON,
             body=oci_errors(("UNAUTHORIZED", "authentication required")))]))  # fmt: skip
    run, _ = pull_from(hostile, tmp_path)
    line = one_error_line(run)
    said = "the token server answered 401 and says UNAUTHORIZED: authentication required"
    assert said in line, line


# --- storage that keeps refusing ---------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_storage_refusing_every_fresh_url_says_what_was_tried(
    hostile: HostileRegistry, tmp_path: Path, status: int
) -> None:
    """The presigned URL is asked for again (and a fresh token) three times; storage still
    refuses: the line says so, not just "HTTP 401"."""
    hostile.load(script(redirect=True, faults=[rule("storage", "", status=status)]))
    run, models = pull_from(hostile, tmp_path)
    line = one_error_line(run)
    assert run.code == 3, run.stderr
    assert f"still answered {status}" in line and "asked the registry 3 times" in line, line
    lookups = [e for e in hostile.log() if e["role"] == "registry" and "/blobs/" in e["path"]]
    assert len(lookups) == 2 * 4  # two blobs, the first round and three more
    assert not (models / "manifests").exists()


# --- a Docker config that is not one ----------------------------------------------------------


BROKEN_CONFIGS = {
    "not JSON": b"{not json",
    "auths not an object": b'{"auths": 5}',
    "an auth that is not base64": None,  # written per registry below
}


def broken_config(tmp_path: Path, hostile: HostileRegistry, kind: str) -> str:
    folder = tmp_path / "docker"
    folder.mkdir()
    text = BROKEN_CONFIGS[kind]
    if text is None:
        host = f"127.0.0.1:{hostile.ports['registry']}"
        text = json.dumps({"auths": {host: {"auth": "%%%"}}}).encode()
    (folder / "config.json").write_bytes(text)
    return str(folder)


@pytest.mark.parametrize("kind", list(BROKEN_CONFIGS))
def test_a_broken_docker_config_is_a_warning_and_a_public_pull_goes_on(
    hostile: HostileRegistry, tmp_path: Path, kind: str
) -> None:
    """Ollama never reads Docker's config, and Docker only warns about a broken one
    ("WARNING: Error loading config file"): a public model is pulled, with one warning."""
    hostile.load(script())
    run, models = pull_from(hostile, tmp_path, DOCKER_CONFIG=broken_config(tmp_path, hostile, kind))
    assert run.code == 0, run.stderr
    [warning] = run.stderr.strip().splitlines()
    config = tmp_path / "docker" / "config.json"
    assert warning.startswith(f"blobdl: warning: Docker config {config}: "), warning
    assert warning.endswith("its credentials are not used"), warning
    assert not store_problems(models) and stored(models, hostile).exists()


@pytest.mark.parametrize("kind", list(BROKEN_CONFIGS))
def test_a_broken_docker_config_is_named_when_the_registry_asks_for_credentials(
    hostile: HostileRegistry, tmp_path: Path, kind: str
) -> None:
    hostile.load(script(auth="basic", credentials="alice:secret"))
    run, _ = pull_from(hostile, tmp_path, DOCKER_CONFIG=broken_config(tmp_path, hostile, kind))
    assert run.code == 3, run.stderr
    warning, line = run.stderr.strip().splitlines()
    config = tmp_path / "docker" / "config.json"
    assert warning.startswith("blobdl: warning: ") and line.startswith("blobdl: error: ")
    assert f"the Docker config {config} could not be used" in line, line


def test_a_docker_config_that_cannot_be_read_is_a_warning_too(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    folder = tmp_path / "docker"
    (folder / "config.json").mkdir(parents=True)  # a folder where the file goes: EISDIR
    hostile.load(script())
    run, _ = pull_from(hostile, tmp_path, DOCKER_CONFIG=str(folder))
    assert run.code == 0, run.stderr
    [warning] = run.stderr.strip().splitlines()
    assert warning == (
        f"blobdl: warning: Docker config {folder / 'config.json'}: cannot be "
        "read: Is a directory; its credentials are not used"
    )


# --- the registry's text in the library's errors -----------------------------------------------

ESCAPES = "\x1b]0;pwned\x07\x1b[2J\u202e"
_MODEL = fixed_model()[1]  # a model's manifest, served as it is


@pytest.mark.parametrize(
    "served",
    [
        script(json.dumps({"mediaType": ESCAPES + "x" * 5000, "manifests": []}).encode(),
               content_type="application/json"),
        script(faults=[rule("registry", "manifests", status=401,
                            headers={"WWW-Authenticate": "Bearer realm=\"" + ESCAPES + "\""})]),
        script(faults=[rule("registry", "manifests", status=401,
                            headers={"WWW-Authenticate": "Negotiate " + ESCAPES})]),
        script(json.dumps({"schemaVersion": 2, "config": {"digest": ESCAPES + "y" * 5000},
                           "layers": []}).encode()),
        script(faults=[rule("registry", "manifests", status=403, headers=JSON,
                            body=oci_errors(("DENIED", ESCAPES + "z" * 5000)))]),
        script(faults=[rule("registry", "manifests", status=200, body=json.dumps(_MODEL),
                            headers={**JSON, "Docker-Content-Digest": "sha256:" + ESCAPES})]),
    ],
    ids=["an index's media type", "a token realm", "a challenge", "a digest's text",
         "an error body's message", "a served digest"],
)  # fmt: skip
def test_the_registrys_text_in_a_library_error_is_escaped_and_short(
    hostile: HostileRegistry, tmp_path: Path, served: dict[str, Any]
) -> None:
    """The CLI escapes its error line; a library caller logs ``str(exc)`` as it is: what the
    registry said is in it escaped (``\\x1b``), never raw, and cut short."""
    import blobdl
    from tests.integration.test_pull_hostile import NO_PROXIES, patched_env

    hostile.load(served)
    reference = f"http://127.0.0.1:{hostile.ports['registry']}/{REGISTRY_REPO}:{REGISTRY_TAG}"
    env = patched_env(**NO_PROXIES, DOCKER_CONFIG=str(tmp_path / "none"))
    with env, pytest.raises(blobdl.BlobdlError) as caught:
        blobdl.pull(reference, tmp_path / "models", retries=1, max_backoff=0.01)
    words = str(caught.value)
    assert words.isprintable() and len(words) < 1000, words
    assert "\\x1b" in words or "x1b" in words, words


# --- manifests Ollama pulls though they look odd (the second pull review) --------------------


def _layers(doc: dict[str, Any], **change: Any) -> dict[str, Any]:
    return {**doc, "layers": [{**doc["layers"][0], **change}]}


def _unsized(doc: dict[str, Any], where: str) -> dict[str, Any]:
    if where == "config":
        return {**doc, "config": without(doc["config"], "size")}
    return _layers(without(doc, "layers") | {"layers": [without(doc["layers"][0], "size")]})


@pytest.mark.parametrize("redirect", [False, True], ids=["registry", "storage"])
@pytest.mark.parametrize("where", ["config", "layer", "null"])
def test_a_blob_whose_size_the_manifest_does_not_give_is_pulled_as_ollama_pulls_it(
    hostile: HostileRegistry, tmp_path: Path, where: str, redirect: bool
) -> None:
    """Ollama never reads a layer's size to pull it (``downloadBlob`` asks the blob's HEAD)
    and writes the manifest as served: ``ollama list`` counts such a blob as 0 bytes, from
    our store as from its own. We learn the size from the blob's first byte."""
    _, doc = fixed_model()
    doc = _layers(doc, size=None) if where == "null" else _unsized(doc, where)
    raw = json.dumps(doc).encode()
    hostile.load(script(raw, redirect=redirect))
    pulled_as_served(hostile, tmp_path, raw)


def test_keys_differing_in_case_outside_ollamas_fields_are_pulled(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    """Go folds case only to match a struct's fields: annotations, or any key Ollama's
    Manifest and Layer do not have, may differ in case only (as OCI annotations do)."""
    _, doc = fixed_model()
    notes = {"org.example.a": "1", "ORG.EXAMPLE.A": "2"}
    doc = {**_layers(doc, annotations=notes), "annotations": notes, "x": 1, "X": 2}
    raw = json.dumps(doc).encode()
    hostile.load(script(raw))
    pulled_as_served(hostile, tmp_path, raw)


def test_a_field_named_twice_in_two_cases_is_read_as_go_reads_it(
    hostile: HostileRegistry, tmp_path: Path
) -> None:
    """``"layers"`` then ``"Layers"``: Go decodes the second into the field too, the last
    wins; Ollama fetches the blob the last names, and so do we."""
    blobs, doc = fixed_model()
    bogus = {"mediaType": "x", "digest": "sha256:" + "e" * 64, "size": 1}
    text = json.dumps({**without(doc, "layers"), "layers": [bogus]})
    raw = (text[:-1] + ', "Layers": ' + json.dumps(doc["layers"]) + "}").encode()
    hostile.load(script(raw))
    run, models = pull_from(hostile, tmp_path)
    assert run.code == 0, run.stderr
    assert stored(models, hostile).read_bytes() == raw
    assert {p.name for p in (models / "blobs").iterdir()} == {d.replace(":", "-") for d in blobs}


@pytest.mark.parametrize("bad", [b"\xff", b"\xe2\x82", b"\\ud800"], ids=["ff", "cut", "surrogate"])
def test_invalid_utf8_in_a_manifest_string_is_read_as_go_reads_it(
    hostile: HostileRegistry, tmp_path: Path, bad: bytes
) -> None:
    """Go's decoder reads invalid UTF-8 in a string (and a lone surrogate escape) as U+FFFD:
    a media type or an annotation holding it is no reason to refuse the model."""
    blobs, doc = fixed_model()
    text = json.dumps(_layers(doc, mediaType="MEDIA", annotations={"a": "NOTE"}))
    raw = text.encode().replace(b"MEDIA", b"m" + bad).replace(b"NOTE", bad + b"n")
    hostile.load(script(raw))
    run, models = pull_from(hostile, tmp_path, "--json")
    assert run.code == 0, run.stderr
    assert stored(models, hostile).read_bytes() == raw
    assert {p.name for p in (models / "blobs").iterdir()} == {d.replace(":", "-") for d in blobs}


@pytest.mark.parametrize("times", [1, None], ids=["the look-up", "every answer"])
def test_a_blob_of_no_stated_size_whose_answer_lies_never_lands(
    hostile: HostileRegistry, tmp_path: Path, times: int | None
) -> None:
    """The size a blob's own answer says is no more trusted than a manifest's: the blob is
    checked against its digest, and a pull that fails leaves no manifest."""
    _, doc = fixed_model()
    raw = json.dumps(_unsized(doc, "layer")).encode()
    lie = rule("registry", doc["layers"][0]["digest"], status=200, body="xyz", times=times)
    hostile.load(script(raw, faults=[lie]))
    run, models = pull_from(hostile, tmp_path)
    line = one_error_line(run)
    assert not stored(models, hostile).exists() and not store_problems(models)
    if times == 1:  # Ollama's download too is cut to the size its HEAD said, and fails
        assert "the registry's answer gives sha256:" in line and "as 3 bytes" in line, line


@pytest.mark.parametrize("key", ["Config", "CONFIG", "Layers"])
def test_a_field_spelled_in_another_case_is_pulled(
    hostile: HostileRegistry, tmp_path: Path, key: str
) -> None:
    """Go matches ``"Config"`` to the field ``config``: Ollama pulls the model (a config so
    spelled made our check look for ``"config"`` itself: a KeyError, exit 1)."""
    blobs, doc = fixed_model()
    raw = json.dumps(doc).replace(f'"{key.lower()}"', f'"{key}"', 1).encode()
    hostile.load(script(raw))
    run, models = pull_from(hostile, tmp_path)
    assert run.code == 0, run.stderr
    assert stored(models, hostile).read_bytes() == raw
    assert {p.name for p in (models / "blobs").iterdir()} == {d.replace(":", "-") for d in blobs}
