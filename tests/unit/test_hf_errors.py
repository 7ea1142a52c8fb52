"""The Hub's refusals as our errors: what the Hub said travels with them, across a pickle
(errors cross from worker processes) as in their one line."""

from __future__ import annotations

import pickle

import pytest

from blobdl.errors import (
    BlobdlError,
    EntryNotFound,
    GatedRepository,
    RepositoryNotFound,
    RevisionNotFound,
)

SAYS = "the Hub says Invalid rev id: nope"


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (GatedRepository("a/b", "no token was sent", "the Hub says x"),
         "gated repository: a/b (no token was sent; the Hub says x)"),
        (RepositoryNotFound("a/b", "it does not exist"),
         "repository not found: a/b (it does not exist)"),
        (RepositoryNotFound("a/b"), "repository not found: a/b"),
        (RevisionNotFound("a/b", "nope", SAYS),
         f"revision not found: a/b has no revision 'nope' ({SAYS})"),
        (EntryNotFound("a/b", "main", "x.bin"),
         "file not found: a/b has no 'x.bin' at revision 'main'"),
    ],
)  # fmt: skip
def test_a_hub_error_keeps_what_the_hub_said_across_a_pickle(error: BlobdlError, line: str) -> None:
    assert str(error) == line
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == line
