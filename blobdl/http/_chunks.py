"""The lines that frame a chunked body, read as RFC 9112 7.1 writes them.

``chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF``, the size ``1*HEXDIG``.
http.client reads the size with ``int(line, 16)``, which takes a sign, ``0x``, ``_`` and
white space too (CPython gh-150751): ``-1`` left its chunk counter below zero for good, and
the rest of the stream, chunk lines and trailers included, was read raw as the body. It
also drops the two bytes after a chunk's data without looking at them, so data longer than
its size lost two of its bytes and the body read on. A line or an end that is not the
grammar's (``ChunkError``) is a bad response, never bytes of the body; a connection that
closes in the middle of a line is a truncation, as before.

Lenient where the grammar or RFC 9112 2.2 lets a recipient be: any case, leading zeros,
extensions (with white space before their ``;``), white space before the line's end, a bare
LF ending the size line.
"""

from __future__ import annotations

import http.client
import re

from ..config import MAX_BYTES

# http.client's limit on a line (64 KiB): a longer size line is refused as it always was.
_MAXLINE = getattr(http.client, "_MAXLINE", 65536)
# Trailer lines: http.client read them without a count, so a server that kept sending them
# held the body open for ever, bytes flowing (no stall). As many as a head may have fields.
_MAXTRAILERS = getattr(http.client, "_MAXHEADERS", 100)
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]+)[ \t]*(?:;[^\r\n]*)?\r?\n")


class ChunkError(http.client.HTTPException):
    """A chunked body's framing is not the grammar's: a size line or a chunk's end."""


def chunk_size(line: bytes) -> int:
    """The size a whole chunk-size line (its line end included) states."""
    match = _SIZE_LINE.fullmatch(line)
    if match is None:
        raise ChunkError(f"chunk size line {line[:40]!r} is not a hex number")
    size = int(match.group(1), 16)
    if size > MAX_BYTES:
        raise ChunkError(f"chunk size {match.group(1)[:40]!r} is larger than any blob")
    return size


class StrictChunks(http.client.HTTPResponse):
    """http.client's response, its chunk lines and chunk ends read as the grammar writes
    them (``_get_chunk_left`` is http.client's, but for those two checks)."""

    chunk_left: int | None
    chunk_size = 0  # what the current chunk's size line stated

    def unchecked(self) -> int:
        """Bytes of the current chunk already handed out whose chunk's end (the CRLF after
        its data) is not checked yet: a size line that stated more than its data makes them
        the line end, the next size line and the next chunk's bytes."""
        return 0 if self.chunk_left is None else self.chunk_size - self.chunk_left

    def ends_here(self) -> None:
        """The caller read all the body it wants (a range's stop): that must be a chunk's
        end, followed by the last chunk; else the chunks state other bytes than the range
        holds (``ChunkError``)."""
        if self.chunk_left or (self.chunk_left == 0 and self._get_chunk_left() is not None):
            self._close_conn()  # type: ignore[attr-defined]
            raise ChunkError("the chunks state more bytes than the range the answer holds")

    def _get_chunk_left(self) -> int | None:
        chunk_left = self.chunk_left
        if not chunk_left:  # 0: at the end of a chunk's data; None: before the first chunk
            if chunk_left is not None and self._safe_read(2) != b"\r\n":  # type: ignore[attr-defined]
                self._close_conn()  # type: ignore[attr-defined]
                raise ChunkError("a chunk's data is longer than its size says")
            chunk_left = self._read_next_chunk_size()
            if chunk_left == 0:  # the last chunk: trailers, then the end of the body
                self._read_and_discard_trailer()
                self._close_conn()  # type: ignore[attr-defined]
                chunk_left = None
            self.chunk_left, self.chunk_size = chunk_left, chunk_left or 0
        return chunk_left

    def _read_and_discard_trailer(self) -> None:
        """The trailer section, up to its empty line, at most ``_MAXTRAILERS`` lines."""
        for _ in range(_MAXTRAILERS + 1):
            line = self.fp.readline(_MAXLINE + 1)
            if len(line) > _MAXLINE:
                raise http.client.LineTooLong("trailer line")
            if line in (b"\r\n", b"\n", b""):  # its end (or the connection's)
                return
        self._close_conn()  # type: ignore[attr-defined]
        raise ChunkError(f"more than {_MAXTRAILERS} trailer lines")

    def _read_next_chunk_size(self) -> int:
        line = self.fp.readline(_MAXLINE + 1)
        if len(line) > _MAXLINE:
            raise http.client.LineTooLong("chunk size")
        if not line.endswith(b"\n"):  # the connection closed in the line: a truncation
            self._close_conn()  # type: ignore[attr-defined]
            raise http.client.IncompleteRead(b"")
        try:
            return chunk_size(line)
        except ChunkError:
            self._close_conn()  # type: ignore[attr-defined]  # where the body ends is lost
            raise
