"""What a server's text may show of itself in our messages: escaped, and cut short.

A status line, a header value, a name, a remote's error message: a hostile server can put
terminal escapes in it (a window title, a cleared screen, an OSC 8 link), a bare CR that
prints "OK" over our error, a NUL, a line break that forges a second line, a BiDi override,
or a megabyte. Whatever of it becomes part of a message (an error's ``str``, a log record)
goes through ``quoted`` (text that is all the server's) or ``escaped`` (a library's words
that may carry some), where it is turned into our words: then an error says the same to
a terminal, a log file, a caller's handler and a ``--json`` consumer, and the user still
reads what the server said.
"""

from __future__ import annotations

# Enough to tell a status line, a header value or a name; a megabyte tells no more.
MAX_SAID = 200


def quoted(text: str | bytes, limit: int = MAX_SAID) -> str:
    """``text`` as ``repr`` writes it (quoted; ``\\x1b``, ``\\r``, ``\\u202e`` escaped), its
    first ``limit`` characters only, saying how many more there were. Bytes are read as
    latin-1, one character a byte, as HTTP's head is."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text) - limit} more characters)"


def escaped(text: str, limit: int = 2 * MAX_SAID) -> str:
    """A message that may carry a server's text (a library's, quoting a header it refused)
    as it reads, unquoted: any character that is not printable escaped (``\\x1b``,
    ``\\u202e``), cut after ``limit`` characters."""
    more = len(text) - limit
    text = text[:limit] if more > 0 else text
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escape(c) for c in text)
    return f"{text}... ({more} more characters)" if more > 0 else text


def _escape(character: str) -> str:
    return character.encode("unicode_escape").decode("ascii")
