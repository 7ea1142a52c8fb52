"""Model references are read as ``ollama pull`` reads them.

The expected paths and requests are the machine-checked table of
``/work/shared/notes/ollama.md`` §9: a Go program built from copies of Ollama's
``types/model`` and ``internal/modelref`` (snapshot fb30760996871fa9460115c753afd2c60d4ab0f7)
ran every reference through the ``/api/pull`` chain (``ParseRef`` → ``NormalizePullName`` →
``ParseName`` + ``IsValid`` → ``getExistingName`` → ``DisplayShortest`` → ``ParseName``) and
printed the manifest path written and the request made. Rows marked "ours" are blobdl's
digest-pin extension, which Ollama has no equivalent of.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blobdl import UsageError
from blobdl.registry._names import Reference, adopt_case, parse_reference, require_reachable

HEX = "ab" * 32

# (reference, manifest path under manifests/, host contacted, request path)
ACCEPTED = [
    ("llama3.2", "registry.ollama.ai/library/llama3.2/latest"),
    ("llama3.2:1b", "registry.ollama.ai/library/llama3.2/1b"),
    ("library/llama3.2", "registry.ollama.ai/library/llama3.2/latest"),
    ("ns/m:t", "registry.ollama.ai/ns/m/t"),
    ("registry.ollama.ai/library/llama3.2", "registry.ollama.ai/library/llama3.2/latest"),
    ("registry.ollama.ai/library/llama3.2:latest", "registry.ollama.ai/library/llama3.2/latest"),
    ("https://registry.ollama.ai/library/llama3.2:1b", "registry.ollama.ai/library/llama3.2/1b"),
    ("http://localhost:5000/ns/m:t", "localhost:5000/ns/m/t"),
    ("HTTP://localhost:5000/ns/m:t", "localhost:5000/ns/m/t"),
    ("ftp://h/ns/m:t", "h/ns/m/t"),
    ("Library/Llama3.2:1B", "registry.ollama.ai/library/Llama3.2/1B"),
    ("LOCALHOST:5000/NS/M:T", "LOCALHOST:5000/NS/M/T"),
    ("REGISTRY.OLLAMA.AI/LIBRARY/M:T", "registry.ollama.ai/library/M/T"),
    ("registry.ollama.ai/Other/m", "registry.ollama.ai/Other/m/latest"),
    ("registry.ollama.ai/library/m:Latest", "registry.ollama.ai/library/m/Latest"),
    ("M:LATEST", "registry.ollama.ai/library/M/LATEST"),
    ("gpt-oss:20b:cloud", "registry.ollama.ai/library/gpt-oss/20b-cloud"),
    ("gpt-oss:cloud", "registry.ollama.ai/library/gpt-oss/cloud"),
    ("gpt-oss:20b-cloud", "registry.ollama.ai/library/gpt-oss/20b-cloud"),
    ("gpt-oss:20B-Cloud", "registry.ollama.ai/library/gpt-oss/20B-cloud"),
    ("m:CLOUD", "registry.ollama.ai/library/m/cloud"),
    ("m:local", "registry.ollama.ai/library/m/latest"),
    ("m:20b:local", "registry.ollama.ai/library/m/20b"),
    ("localhost:5000/ns/m:cloud", "localhost:5000/ns/m/cloud"),
    ("_private/m:t", "registry.ollama.ai/_private/m/t"),
    ("my_host/ns/m:t", "my_host/ns/m/t"),
    ("my.host/ns/m:t", "my.host/ns/m/t"),
    ("my-host.example.com/ns/m:t", "my-host.example.com/ns/m/t"),
    ("ns-x_y/m:t", "registry.ollama.ai/ns-x_y/m/t"),
    ("h/ns/m.v1.2:t.x", "h/ns/m.v1.2/t.x"),
    ("_m:_t", "registry.ollama.ai/library/_m/_t"),
    ("m-:t-", "registry.ollama.ai/library/m-/t-"),
    ("m_:t.", "registry.ollama.ai/library/m_/t."),
    ("h/_ns/_m:_t", "h/_ns/_m/_t"),
    ("_h/ns/m:t", "_h/ns/m/t"),
    ("127.0.0.1:5000/ns/m:t", "127.0.0.1:5000/ns/m/t"),
    ("127.0.0.1/ns/m", "127.0.0.1/ns/m/latest"),
    ("localhost:5000/ns/m", "localhost:5000/ns/m/latest"),
    ("localhost/m", "registry.ollama.ai/localhost/m/latest"),
    ("host:https/namespace/model:tag", "host:https/namespace/model/tag"),
    ("h/n/m:t", "h/n/m/t"),
    ("0/0/0:0", "0/0/0/0"),
    ("  llama3  ", "registry.ollama.ai/library/llama3/latest"),
    ("m:t ", "registry.ollama.ai/library/m/t"),
    (f"sha256:{HEX}", f"registry.ollama.ai/library/sha256/{HEX}"),
    ("m" * 80, f"registry.ollama.ai/library/{'m' * 80}/latest"),
    ("m:" + "t" * 80, f"registry.ollama.ai/library/m/{'t' * 80}"),
    ("n" * 80 + "/m", f"registry.ollama.ai/{'n' * 80}/m/latest"),
    ("h" * 350 + "/ns/m", f"{'h' * 350}/ns/m/latest"),
    # ours: a digest pin, stored under the tag given, else under sha256-<hex>
    (f"m@sha256:{HEX}", f"registry.ollama.ai/library/m/sha256-{HEX}"),
    (f"m:t@sha256:{HEX}", "registry.ollama.ai/library/m/t"),
    (f"localhost:5000/ns/m@sha256:{HEX.upper()}", f"localhost:5000/ns/m/sha256-{HEX}"),
]

# (reference, what the one-line refusal says)
REFUSED = [
    ("registry.ollama.ai/llama3.2", "namespace 'registry.ollama.ai' may not contain '.'"),
    ("https://llama3.2", "a scheme:// goes only before HOST/NAMESPACE/MODEL"),
    ("https://ns/m", "a scheme:// goes only before HOST/NAMESPACE/MODEL"),
    ("m:cloud:local", "use either :local or :cloud, not both"),
    ("a:b:c", "the model 'a:b' may not contain ':'"),
    ("ns.with.dot/m:t", "namespace 'ns.with.dot' may not contain '.'"),
    ("-m", "the model '-m' must start with a letter, a digit or '_'"),
    (".m", "must start with"),
    ("m:-t", "the tag '-t' must start with"),
    ("m:.t", "the tag '.t' must start with"),
    ("-h/ns/m:t", "the host '-h' must start with"),
    (".h/ns/m:t", "the host '.h' must start with"),
    ("[::1]:5000/ns/m:t", "the host '[::1]:5000' must start with"),
    ("::1/ns/m:t", "the host '::1' must start with"),
    ("localhost:5000/m:t", "namespace 'localhost:5000' may not contain ':'"),
    ("a/b/c/d:t", "too many '/'"),
    ("/m:t", "the namespace is empty"),
    ("//m", "is empty"),
    ("ns/", "the model is empty"),
    ("m:", "the tag is empty"),
    (":t", "the model is empty"),
    ("", "the model is required"),
    ("   ", "the model is required"),
    ("m:t/x", "namespace 'm:t' may not contain ':'"),
    ("m@sha256:12", "a pin is @sha256:<64 hex digits>"),
    (f"m@sha256-{HEX}", "a pin is @sha256:<64 hex digits>"),
    (f"@sha256:{HEX}", "the model is required"),
    ("modèle", "the model 'modèle' may not contain 'è'"),
    ("m t", "the model 'm t' may not contain ' '"),
    ("\x1cm", "must start with"),  # Go's TrimSpace leaves \x1c where str.strip() would not
    ("m" * 81, "the model is 81 bytes long (at most 80)"),
    ("m:" + "t" * 81, "the tag is 81 bytes long (at most 80)"),
    ("m:" + "t" * 128, "the tag is 128 bytes long (at most 80)"),
    ("n" * 81 + "/m", "the namespace is 81 bytes long (at most 80)"),
    ("h" * 351 + "/ns/m", "the host is 351 bytes long (at most 350)"),
    ("../x", "the namespace '..' must start with"),
    ("ns/..", "the model '..' must start with"),
    ("m:../../etc", "the namespace '..' must start with"),
]


def path(ref: Reference) -> str:
    return "/".join(ref.parts)


@pytest.mark.parametrize(("text", "expected"), ACCEPTED, ids=repr)
def test_a_reference_ollama_accepts_is_stored_where_ollama_stores_it(
    text: str, expected: str
) -> None:
    ref = parse_reference(text)
    assert path(ref) == expected
    host, namespace, model, tag = expected.split("/")
    assert ref.host == host
    pin = f"sha256:{HEX}" if "@" in text else tag
    assert (ref.repository, ref.manifest_reference) == (f"{namespace}/{model}", pin)


@pytest.mark.parametrize(("text", "why"), REFUSED, ids=repr)
def test_a_reference_ollama_refuses_is_refused_with_one_line_saying_why(
    text: str, why: str
) -> None:
    with pytest.raises(UsageError) as caught:
        parse_reference(text)
    message = str(caught.value)
    assert message.startswith(f"invalid model reference {text!r}: ")
    assert why in message and "\n" not in message


def test_the_table_is_large_enough() -> None:
    assert len(ACCEPTED) + len(REFUSED) >= 45


@pytest.mark.parametrize(
    ("text", "scheme"),
    [("http://h:5000/ns/m", "http"), ("HTTP://h/ns/m", "http"), ("ftp://h/ns/m", "https"),
     ("h/ns/m", "https"), ("llama3.2", "https")],
)  # fmt: skip
def test_only_http_scheme_means_plain_http(text: str, scheme: str) -> None:
    assert parse_reference(text).scheme == scheme


# The store of the note's getExistingName check (§2): two models already pulled.
STORE = [
    ("registry.ollama.ai", "library", "Llama3.2", "latest"),
    ("localhost:5000", "MyNs", "Model", "V1"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("llama3.2:1b", "registry.ollama.ai/library/Llama3.2/1b"),
        ("LLAMA3.2", "registry.ollama.ai/library/Llama3.2/latest"),
        ("Localhost:5000/myns/other:v1", "localhost:5000/MyNs/other/V1"),
        ("otherhost/mYnS/x:LATEST", "otherhost/MyNs/x/latest"),
        ("mymodel:v1", "registry.ollama.ai/library/mymodel/V1"),
    ],
)
def test_each_part_takes_the_spelling_already_in_the_store(text: str, expected: str) -> None:
    assert path(adopt_case(parse_reference(text), STORE)) == expected


def test_localhost_in_two_cases_is_one_model() -> None:
    first = parse_reference("LOCALHOST:5000/ns/m:t")
    assert path(first) == "LOCALHOST:5000/ns/m/t"
    second = adopt_case(parse_reference("localhost:5000/NS/M:T"), [first.parts])
    assert second.parts == first.parts


def test_among_several_spellings_the_model_matching_most_parts_wins() -> None:
    store = [("h", "ns", "m", "v1"), ("H", "NS", "M", "v2"), ("h", "ns", "x", "v3")]
    assert path(adopt_case(parse_reference("H/ns/M:v2"), store)) == "H/NS/M/v2"
    assert path(adopt_case(parse_reference("H/NS/m:v1"), store)) == "h/ns/m/v1"
    # a tie (two parts each): the spelling typed stays; the order of the store never matters
    for ordered in (store, store[::-1]):
        assert path(adopt_case(parse_reference("H/ns/q:v9"), ordered)) == "H/ns/q/v9"


def test_the_default_host_and_library_fold_after_the_store_spelling() -> None:
    store = [("REGISTRY.OLLAMA.AI", "LIBRARY", "M", "latest")]
    assert path(adopt_case(parse_reference("m"), store)) == "registry.ollama.ai/library/M/latest"


def test_seven_hundred_random_references_land_where_ollamas_own_code_puts_them() -> None:
    """``ollama_names.jsonl``: 700 references (350 Ollama accepts, 350 it refuses) drawn from
    90,000 random ones, each with the manifest path Ollama's own code gives it, or null
    where it refuses it. The paths were computed by the note's ``pullsim`` (copies of
    Ollama's ``types/model`` and ``internal/modelref`` and the PullHandler → PullModel name
    steps, snapshot fb30760996871fa9460115c753afd2c60d4ab0f7), not by blobdl; on all 90,000
    blobdl agreed."""
    rows = [json.loads(line) for line in (Path(__file__).parent / "ollama_names.jsonl").open()]
    assert len(rows) == 700
    differ = []
    for text, expected in rows:
        try:
            got: str | None = path(parse_reference(text))
        except UsageError:
            got = None
        if got != expected:
            differ.append((text, expected, got))
    assert differ == []


@pytest.mark.parametrize(
    "text", ["host:https/namespace/model:tag", "h:99999/ns/m", "h:0/ns/m", "a:1:2/ns/m", "h:/ns/m"]
)
def test_a_valid_name_whose_host_has_no_port_is_refused_before_any_request(text: str) -> None:
    ref = parse_reference(text)  # Ollama accepts the name; its request then fails
    with pytest.raises(UsageError, match="no registry can be reached at"):
        require_reachable(ref)


@pytest.mark.parametrize("text", ["h:5000/ns/m", "h:65535/ns/m", "h/ns/m", "llama3.2"])
def test_a_host_with_a_port_or_none_is_reachable(text: str) -> None:
    require_reachable(parse_reference(text))


@pytest.mark.parametrize(
    "text",
    [
        "https://alice:s3cret@registry.example.com/ns/m:v1",
        "http://alice:s3cret@127.0.0.1:5000/ns/m",
        "alice:s3cret@localhost:5000/ns/m:t",
        " s3cret@h/ns/m",  # a token alone, as some registries take it
        f"alice:s3cret@h/ns/m@sha256:{HEX}",
    ],
)
def test_credentials_in_a_reference_are_refused_without_echoing_them(text: str) -> None:
    """Ollama has no credentials in a name (no part may hold '@'), and neither do we; a
    user who writes them there, as in a URL, is told where they go, and the secret is not
    printed back (the error line lands in terminals and CI logs)."""
    with pytest.raises(UsageError) as caught:
        parse_reference(text)
    message = str(caught.value)
    assert "s3cret" not in message
    assert "credentials" in message and "Docker config" in message
    assert "\n" not in message
