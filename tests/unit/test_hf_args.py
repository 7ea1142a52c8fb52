"""``blobdl hf REPO [PATH ...]``: paths may come before, between or after the options, as
with ``huggingface-cli download`` and most commands; "unrecognized arguments: config.json"
for a path after ``--revision X`` was argparse's default, not a rule of ours."""

from __future__ import annotations

from blobdl.cli import _hf


def test_paths_after_options_are_paths() -> None:
    argv = ["acme/tiny", "--revision", "v1", "config.json", "--include", "*.bin", "b.json"]
    args = _hf.parse(argv)
    assert (args.repo, args.revision, args.paths) == ("acme/tiny", "v1", ["config.json", "b.json"])
    assert args.include == ["*.bin"]


def test_paths_right_after_the_repo_still_are() -> None:
    args = _hf.parse(["acme/tiny", "a.json", "b.json", "--revision", "v1"])
    assert (args.paths, args.revision) == (["a.json", "b.json"], "v1")
