"""The public API is what ``blobdl/__init__.py`` lists, every name of it there to use; the
registry's and Hugging Face's parts of it load when first used, so a download (or a
manifest of thousands of small files) does not pay for them at every start."""

from __future__ import annotations

import subprocess
import sys

import pytest

import blobdl
from tests.conftest import REPO

LATER = ("blobdl.registry", "blobdl.hf")


@pytest.mark.parametrize("name", blobdl.__all__)
def test_every_listed_name_is_there(name: str) -> None:
    assert getattr(blobdl, name) is not None
    assert name in dir(blobdl)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        blobdl.nonesuch  # type: ignore[attr-defined]  # noqa: B018


def loaded_after(code: str) -> list[str]:
    """The registry's and Hugging Face's modules a fresh interpreter has loaded after ``code``."""
    show = f"import sys; print(sorted(m for m in sys.modules if m.startswith({LATER!r})))"
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\n{show}"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return eval(out.stdout)  # type: ignore[no-any-return]


def test_a_download_or_a_manifest_loads_neither_the_registry_nor_hugging_face() -> None:
    assert loaded_after("import blobdl") == []
    assert loaded_after("from blobdl.cli import main; main(['-q', '-i', '/dev/null'])") == []


def test_a_pull_on_one_machine_loads_no_part_of_the_cluster() -> None:
    """The cluster's door (Dask's client, asyncio: ~20 ms) is for ``--scheduler`` only."""
    code = "import blobdl.cli._pull, blobdl; blobdl.PullStarted, blobdl.WorkerEvent"
    show = "import sys; print(sorted(m for m in sys.modules if 'cluster' in m or m == 'asyncio'))"
    out = subprocess.run([sys.executable, "-c", f"{code}\n{show}"], cwd=REPO, capture_output=True,
                         text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert eval(out.stdout) == []


def test_they_load_when_used() -> None:
    assert "blobdl.registry._pull" in loaded_after("import blobdl; blobdl.pull")
    assert "blobdl.hf._download" in loaded_after("from blobdl import hf_download")


def test_the_repr_of_settings_and_items_shows_no_credential() -> None:
    """A job that logs its settings or its items (``ItemResult.item`` in a failure report)
    must not log a header's value, a proxy's password or a URL's own credentials."""
    settings = blobdl.Settings(headers=(("Authorization", "Bearer s3cret-1"),),
                               proxy="http://user:s3cret-2@proxy:3128")  # fmt: skip
    item = blobdl.Item("https://bob:s3cret-3@host/x.bin?sig=s3cret-4", "x.bin",
                       headers=(("Cookie", "id=s3cret-5"),))  # fmt: skip
    shown = repr(settings) + repr(item) + repr(blobdl.ItemResult(item, None, None))
    assert "s3cret" not in shown, shown
    assert "Authorization" in shown and "Cookie" in shown and "host/x.bin" in shown
    assert "retries=6" in shown and "path='x.bin'" in shown  # the rest as a dataclass shows it


def test_a_bad_header_name_shows_no_more_than_its_first_word() -> None:
    """A pair given the wrong way round (``("Bearer TOKEN", "Authorization")``) or a whole
    line as its name (``"Authorization: Bearer TOKEN"``) was refused showing the whole
    name, its credential included, in Settings, an Item and download's overrides alike; the
    CLI's ``-H`` and a manifest's ``headers`` show only what comes before the bad character."""
    url = "http://127.0.0.1:9/x"
    calls = [
        lambda: blobdl.Settings(headers=(("Bearer s3cret-1", "Authorization"),)),
        lambda: blobdl.Settings(headers=(("Authorization: Bearer s3cret-2", ""),)),
        lambda: blobdl.download(url, "o", headers=(("Bearer s3cret-3", "Authorization"),)),
        lambda: blobdl.download_many(
            [blobdl.Item(url, "o", None, (("Bearer s3cret-4", "Authorization"),))],
            base_dir="/nonexistent",
        ),
    ]
    for call in calls:
        with pytest.raises(blobdl.UsageError) as caught:
            call()
        shown = str(caught.value) + repr(caught.value)
        assert "s3cret" not in shown, shown
        assert "Bearer" in shown or "Authorization" in shown, shown  # still named


def _error_classes() -> list[type[blobdl.BlobdlError]]:
    import blobdl.errors

    return [
        c
        for c in vars(blobdl.errors).values()
        if isinstance(c, type) and issubclass(c, blobdl.BlobdlError)
    ]


def _sample(name: str, annotation: str, index: int) -> object:
    """A value for an error's constructor argument, unlike every other one and every
    default, so that a pickle that loses or swaps an argument shows it."""
    samples: dict[str, object] = {
        "str": f"http://host{index}/{name}",
        "int": 40 + index,
        "int | None": 40 + index,
        "float": 1.5 + index,
        "float | None": 1.5 + index,
        "bool": True,
        "BaseException": blobdl.Stalled(2.0 + index),
    }
    return samples[annotation]


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_every_error_pickles_with_its_fields_and_exit_code(cls: type) -> None:
    """docs/library.md: every error carries ``exit_code``, and all of them pickle (they
    cross from a download's process to the caller), each kept with its constructor's
    arguments in order. The test that lists some of them passed ``EntryNotFound`` keeping
    three of its four."""
    import inspect
    import pickle

    if not any("__init__" in vars(k) for k in cls.__mro__ if k.__module__ == cls.__module__):
        error = cls("a detail")  # the root classes take any arguments
    else:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        error = cls(*(_sample(p.name, str(p.annotation), i) for i, p in enumerate(params)))
    clone = pickle.loads(pickle.dumps(error))

    def fields(e: BaseException) -> dict[str, object]:
        return {k: str(v) if isinstance(v, BaseException) else v for k, v in vars(e).items()}

    assert type(clone) is cls and str(clone) == str(error) and fields(clone) == fields(error)
    # Its arguments are kept in order (blobdl/errors.py): the pickle's own rebuild is right
    # even where the fields it restores after would hide a slip.
    rebuilt = cls(*error.args)
    assert str(rebuilt) == str(error) and fields(rebuilt) == fields(error)
    assert clone.exit_code == error.exit_code in (1, 2, 3, 4, 5, 130)
    assert clone.retryable == error.retryable
