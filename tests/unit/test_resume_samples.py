"""The blocks a resume record checksums (``blobdl/store/_resume.py``: ``samples``) and their
check by a rerun (``_unchanged``), on a real partial file: a block at each end of every
part's bytes, from parts spread over the blob, and one changed block is enough to distrust
the partial."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from blobdl.store._resume import MOST_SAMPLES, SAMPLE, PartRecord, Sample, _unchanged, samples

SIZE = 400_000


def _partial(tmp_path: Path) -> tuple[Path, int]:
    temp = tmp_path / "out.blobdl-tmp"
    temp.write_bytes(os.urandom(SIZE))
    return temp, os.open(temp, os.O_RDONLY)


def test_each_begun_part_gives_a_block_at_each_end_of_its_bytes(tmp_path: Path) -> None:
    parts = [
        PartRecord(0, 100_000, 50_000),
        PartRecord(100_000, 200_000, 100_000),  # not begun: nothing of it is claimed
        PartRecord(200_000, 300_000, 200_100),  # shorter than a block: one block
        PartRecord(300_000, SIZE, SIZE),
    ]
    _, fd = _partial(tmp_path)
    try:
        taken = [(s.offset, s.length) for s in samples(fd, parts)]
    finally:
        os.close(fd)
    assert taken == [
        (0, SAMPLE),
        (50_000 - SAMPLE, SAMPLE),
        (200_000, 100),
        (300_000, SAMPLE),
        (SIZE - SAMPLE, SAMPLE),
    ]


def test_many_parts_give_at_most_the_most_samples_from_across_the_blob(tmp_path: Path) -> None:
    step = SIZE // 100
    parts = [PartRecord(at, at + step, at + step) for at in range(0, SIZE, step)]
    _, fd = _partial(tmp_path)
    try:
        taken = samples(fd, parts)
    finally:
        os.close(fd)
    assert 2 < len(taken) <= MOST_SAMPLES
    assert max(s.offset for s in taken) >= SIZE * 3 // 4  # not only the first parts


def test_one_changed_block_among_unchanged_ones_distrusts_the_partial(tmp_path: Path) -> None:
    parts = [PartRecord(0, SIZE // 2, SIZE // 2), PartRecord(SIZE // 2, SIZE, SIZE)]
    temp, fd = _partial(tmp_path)
    try:
        recorded = samples(fd, parts)
    finally:
        os.close(fd)
    assert _unchanged(temp, recorded)
    with open(temp, "r+b") as partial:  # one byte of the last part's last block
        partial.seek(SIZE - 1)
        last = partial.read(1)
        partial.seek(SIZE - 1)
        partial.write(bytes([last[0] ^ 0xFF]))
    assert not _unchanged(temp, recorded)


def test_a_fifo_swapped_in_at_the_partials_name_is_not_trusted_nor_waited_on(
    tmp_path: Path,
) -> None:
    """Put there after the load's lstat, a FIFO is refused at once: opened plainly to read
    the samples, it blocks the run until some writer comes (for ever, if none does)."""
    fifo = tmp_path / "out.blobdl-tmp"
    os.mkfifo(fifo)
    said: list[bool] = []
    check = threading.Thread(target=lambda: said.append(_unchanged(fifo, [Sample(0, 1, 0)])),
                             daemon=True)  # fmt: skip
    check.start()
    check.join(5)  # microseconds, unless it blocks
    blocked = check.is_alive()
    if blocked:  # opening it for reading: a writer lets the thread end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        check.join(5)
    assert not blocked and said == [False]
